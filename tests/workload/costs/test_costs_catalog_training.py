"""The price catalogue (seed, refresh keeps dates) and Flower runs recorded as priced cost rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
from conftest import RecordedSession, http_response

from costs.catalog import find_offer, load_offers, read_snapshot, seed, upsert_offers
from costs.focus import CostDataError
from costs.pricing import refresh
from costs.report import cost_report
from costs.training import load_sites, parse_seconds, record_training


def test_snapshot_is_the_shipped_copy():
    offers = read_snapshot()
    assert len(offers) == 97
    assert {o.provider for o in offers} == {"aws", "gcp", "azure"}
    g4 = find_offer(offers, "aws", "eu-central-1", "g4dn.xlarge")
    assert (g4.usd_per_hour, g4.gpu_model, g4.vcpu, g4.memory_gib) == (Decimal("0.658"), "T4", 4, 16.0)


def test_bad_snapshot_rows_name_line_and_column(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("provider,instance_type,vcpu,memory_gib,gpu_count,gpu_model,region,usd_per_hour,source_file,"
                    "source_commit\naws,m5.large,2,8,0,,us-east-1,cheap,f,c\n")
    with pytest.raises(CostDataError, match=r"prices.csv line 2.*usd_per_hour.*not a number"):
        read_snapshot(path)


def test_seed_keeps_refreshed_prices(any_store):
    seed(any_store)
    refreshed = find_offer(load_offers(any_store), "azure", "eastus", "Standard_D8s_v5")
    upsert_offers(any_store, [refreshed.__class__(**{**refreshed.__dict__, "usd_per_hour": Decimal("0.4"),
                                                     "as_of": date(2026, 11, 23), "source": "Azure Retail"})])
    seed(any_store)  # again: the dated price stays
    offers = load_offers(any_store)
    assert len(offers) == 97
    kept = find_offer(offers, "azure", "eastus", "Standard_D8s_v5")
    assert (kept.usd_per_hour, kept.as_of) == (Decimal("0.4"), date(2026, 11, 23))


def test_refresh_updates_and_dates_one_provider(sqlite_store):
    items = [{"armSkuName": sku, "retailPrice": 1.5, "productName": "Virtual Machines", "skuName": sku,
              "meterName": sku, "type": "Consumption", "unitOfMeasure": "1 Hour"}
             for sku in ("Standard_D4s_v5", "Standard_NC4as_T4_v3")]
    session = RecordedSession([("GET", r"prices\.azure\.com", [http_response(200, {"Items": items})])])
    result = refresh(sqlite_store, "azure", today=date(2026, 11, 23), session=session)
    assert result["updated"] == 2 and len(result["not_found"]) == 7 and result["as_of"] == "2026-11-23"
    offer = find_offer(load_offers(sqlite_store), "azure", "eastus", "Standard_D4s_v5")
    assert (offer.usd_per_hour, offer.as_of, offer.source) == (Decimal("1.5"), date(2026, 11, 23),
                                                              "Azure Retail Prices API")
    assert refresh(sqlite_store, "gcp")["skipped"].startswith("no API key")


def test_sites_are_declared():
    sites = load_sites()
    assert sorted(sites) == ["plant_a", "plant_b", "plant_c"]
    assert (sites["plant_b"].provider, sites["plant_b"].accelerator, sites["plant_b"].accelerator_count) == (
        "gcp", "T4", 1)


def test_training_is_priced_and_rerecording_replaces(any_store):
    seconds = parse_seconds('{"plant_a": 3600, "plant_b": 1800.5, "plant_c": 0.25}')
    at = datetime(2026, 11, 20, 10, tzinfo=UTC)
    first = record_training(any_store, "run-7", seconds, at=at)
    costs = {r["site"]: Decimal(r["cost"]) for r in first["rows"]}
    places = Decimal("1E-10")  # amounts are kept to 10 places
    assert costs == {
        "plant_a": Decimal("0.658"),
        "plant_b": ((Decimal("0.20917") + Decimal("0.35")) * Decimal("1800.5") / 3600).quantize(places, ROUND_HALF_UP),
        "plant_c": (Decimal("0.526") * Decimal("0.25") / 3600).quantize(places, ROUND_HALF_UP),
    }
    assert costs["plant_c"] == Decimal("0.0000365278")
    assert Decimal(first["total"]) == sum(costs.values())
    assert any_store.count("mledge-training") == 3

    record_training(any_store, "run-7", parse_seconds({"plant_a": 7200}), at=at)  # the run, recorded again
    assert any_store.count("mledge-training") == 1
    assert any_store.totals("mledge-training")["BilledCost"] == Decimal("1.316")

    report = cost_report(any_store, "axis_failures", date(2026, 11, 20), date(2026, 11, 21))
    assert report["by_source"] == {"mledge-training": "1.316"} and report["by_provider"] == {"AWS": "1.316"}


@pytest.mark.parametrize(("text", "problem"), [
    ('{"plant_z": 1}', "not declared"), ('{"plant_a": -1}', "non-negative"), ("[1]", "object"),
    ('{"plant_a": "soon"}', "not a number"), ("{", "not JSON"),
])
def test_bad_training_input_is_named(sqlite_store, text, problem):
    with pytest.raises(ValueError, match=problem):
        record_training(sqlite_store, "run-8", parse_seconds(text))
