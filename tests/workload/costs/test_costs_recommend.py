"""Recommendation over the shipped price snapshot: matches, GCP's separately priced GPUs, every no-match reason."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from costs.catalog import Offer, read_snapshot
from costs.recommend import Template, recommend


@pytest.fixture(scope="module")
def offers() -> list[Offer]:
    return read_snapshot()


def test_the_issue_template_ranks_the_cheapest_per_provider(offers):
    result = recommend(offers, Template(vcpus=8, memory_gib=32, gpus=1, gpu_class="T4", hours=Decimal(10)))
    ranked = [(o["rank"], o["provider"], o["instance_type"], o["region"], o["usd_per_hour"], o["total_usd"])
              for o in result["offers"]]
    assert ranked == [(1, "aws", "g4dn.2xlarge", "us-east-1", "0.752", "7.52"),
                      (2, "azure", "Standard_NC8as_T4_v3", "eastus", "0.752", "7.52")]
    azure = result["offers"][1]
    assert azure["overshoot"] == {"vcpu": 0, "memory_gib": 24, "gpu_count": 0}
    assert azure["source"].startswith("snapshot of skypilot-catalog catalogs/v6/azure/vms.csv@")
    assert azure["as_of"] is None  # the snapshot's date is unknown, and says so
    # GCP's largest n1 with a T4 has 30 GiB: the message says so instead of silently dropping it
    assert "GCP: no offer with at least 32 GiB memory" in result["message"]
    assert result["template"] == {"vcpus": 8, "memory_gib": 32, "gpus": 1, "gpu_class": "T4", "regions": [],
                                  "hours": "10"}


def test_gcp_price_is_host_plus_accelerators(offers):
    l4 = recommend(offers, Template(vcpus=8, memory_gib=32, gpus=1, gpu_class="L4", regions=("us-central1",)))
    (offer,) = l4["offers"]
    assert (offer["instance_type"], offer["usd_per_hour"]) == ("g2-standard-8 + 1 x L4", "0.85362")
    t4 = recommend(offers, Template(vcpus=4, memory_gib=15, gpus=2, gpu_class="T4", regions=("europe-west4",)))
    (offer,) = t4["offers"]
    assert offer["instance_type"] == "n1-standard-4 + 2 x T4"
    assert Decimal(offer["usd_per_hour"]) == Decimal("0.20917") + 2 * Decimal("0.35")


def test_classes_are_never_mixed(offers):
    result = recommend(offers, Template(vcpus=4, memory_gib=16, gpus=1, gpu_class="A10G"))
    assert [o["gpu_model"] for o in result["offers"]] == ["A10G"]
    assert "GCP: no offer with GPU class A10G (catalogued GPU classes: L4, T4)" in result["message"]


def test_cpu_only_template_picks_the_cheapest_size(offers):
    result = recommend(offers, Template(vcpus=2, memory_gib=8, regions=("us-central1", "us-east-1", "eastus")))
    assert [(o["provider"], o["instance_type"]) for o in result["offers"]] == [
        ("gcp", "e2-standard-2"), ("aws", "m5.large"), ("azure", "Standard_D2s_v5")]
    assert result["message"] is None


@pytest.mark.parametrize(("template", "reason"), [
    (Template(4, 16, regions=("ap-south-1",)), "no offer in region(s) ap-south-1"),
    (Template(8, 32, gpus=1, gpu_class="H100"), "no offer with GPU class H100"),
    (Template(8, 32, gpus=8, gpu_class="T4"), "no offer with at least 8 T4 GPUs"),
    (Template(128, 32), "no offer with at least 128 vCPUs"),
    (Template(16, 1000), "no offer with at least 1000 GiB memory"),
])
def test_each_failing_constraint_is_named(offers, template, reason):
    result = recommend(offers, template)
    assert result["offers"] == []
    assert result["message"].startswith("No offer matches the template.")
    for provider in ("AWS", "GCP", "Azure"):
        assert f"{provider}: {reason}" in result["message"]


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"vcpus": 0, "memory_gib": 1}, "vcpus"),
    ({"vcpus": 1, "memory_gib": 1, "gpus": 1}, "without a GPU class"),
    ({"vcpus": 1, "memory_gib": 1, "gpu_class": "T4"}, "0 GPUs"),
    ({"vcpus": 1, "memory_gib": 1, "hours": Decimal(0)}, "hours"),
])
def test_bad_templates_are_refused(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        Template(**kwargs)


def test_a_dated_price_shows_its_date(offers):
    dated = [o if o.instance_type != "m5.large" or o.region != "us-east-1" else
             Offer(**{**o.__dict__, "usd_per_hour": Decimal("0.05"), "as_of": date(2026, 11, 23),
                      "source": "AWS Price List API (pricing.get_products)"}) for o in offers]
    best = recommend(dated, Template(2, 8))["offers"][0]
    assert (best["instance_type"], best["as_of"], best["source"]) == (
        "m5.large", "2026-11-23", "AWS Price List API (pricing.get_products)")
