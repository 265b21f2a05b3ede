"""Cost per project: totals by provider, service, day and project, checked against the sample files themselves."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal

import pytest
from conftest import SAMPLES

from costs.ingest import ingest
from costs.report import chart_svg, cost_report
from costs.sources.focus_files import FocusFileSource
from costs.store import CostStore

WINDOW = (date(2026, 11, 14), date(2026, 11, 21))


def expected_from_csv(pattern: str, project: str) -> tuple[dict, dict, dict]:
    """EffectiveCost by service, by day and by project, added up straight from the CSV text."""
    by_service, by_day, by_project = defaultdict(Decimal), defaultdict(Decimal), defaultdict(Decimal)
    for path in SAMPLES.glob(pattern):
        with path.open(newline="") as handle:
            for r in csv.DictReader(handle):
                start = datetime.fromisoformat(r["ChargePeriodStart"].replace(" UTC", "").replace("Z", ""))
                if not WINDOW[0] <= start.date() < WINDOW[1]:
                    continue
                tags = json.loads(r["Tags"]) if r["Tags"] else {}
                amount = Decimal(r["EffectiveCost"])
                by_project[tags.get("mledge-project")] += amount
                if tags.get("mledge-project") == project:
                    by_service[r["ServiceName"]] += amount
                    by_day[start.date().isoformat()] += amount
    return by_service, by_day, by_project


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded(request, tmp_path_factory):
    """The three samples' window ingested once per database; the tests only read."""
    if request.param == "sqlite":
        store = CostStore(f"sqlite:///{tmp_path_factory.mktemp('report') / 'costs.db'}")
    else:
        store = CostStore(request.getfixturevalue("pg_database"))
    for name, pattern in (("azure", "azure/mledge-focuscost/**/*.csv"), ("gcp", "gcp/*.csv"),
                          ("aws", "aws/mledge-focus/data/**/*.parquet")):
        ingest(FocusFileSource(name, [pattern], base=SAMPLES), store, *WINDOW)
    yield store
    store.dispose()


def test_report_matches_the_exports(loaded):
    report = cost_report(loaded, "axis_failures", *WINDOW)
    assert set(report) >= {"project", "from", "to", "currency", "total", "by_provider", "by_service", "by_day",
                           "projects"}
    assert (report["project"], report["from"], report["to"], report["currency"]) == (
        "axis_failures", "2026-11-14", "2026-11-21", "USD")
    for provider, pattern in (("Microsoft", "azure/mledge-focuscost/**/*.csv"), ("Google Cloud", "gcp/*.csv")):
        by_service, by_day, _ = expected_from_csv(pattern, "axis_failures")
        assert Decimal(report["by_provider"][provider]) == sum(by_service.values())
        assert {e["service"]: Decimal(e["cost"]) for e in report["by_service"] if e["provider"] == provider} == \
            dict(by_service)
        assert {e["day"]: Decimal(e["cost"]) for e in report["by_day"] if e["provider"] == provider} == dict(by_day)
    assert Decimal(report["total"]) == sum(Decimal(v) for v in report["by_provider"].values())
    assert set(report["by_provider"]) == {"AWS", "Google Cloud", "Microsoft"}
    assert len({e["day"] for e in report["by_day"]}) == 7
    costs = [Decimal(e["cost"]) for e in report["by_service"]]
    assert costs == sorted(costs, reverse=True)


def test_projects_include_untagged_and_other_projects(loaded):
    report = cost_report(loaded, "axis_failures", *WINDOW)
    projects = {p["project"]: Decimal(p["cost"]) for p in report["projects"]}
    assert set(projects) == {"axis_failures", "vision_qc", None}
    assert projects["axis_failures"] == Decimal(report["total"])
    assert sum(projects.values()) == loaded.totals()["EffectiveCost"]  # only the window was ingested


def test_metric_changes_the_amounts(loaded):
    effective = cost_report(loaded, "axis_failures", *WINDOW)
    billed = cost_report(loaded, "axis_failures", *WINDOW, metric="BilledCost")
    # AWS training runs under a Savings Plan: billed 0, effective (amortised) > 0
    assert Decimal(billed["by_provider"]["AWS"]) < Decimal(effective["by_provider"]["AWS"])
    with pytest.raises(ValueError, match="metric"):
        cost_report(loaded, "axis_failures", *WINDOW, metric="Cost")


def test_empty_window_and_unknown_project(loaded):
    report = cost_report(loaded, "nobody", *WINDOW)
    assert report["total"] == "0" and report["by_provider"] == {} and report["currency"] is None
    with pytest.raises(ValueError, match="end is exclusive"):
        cost_report(loaded, "axis_failures", WINDOW[1], WINDOW[0])


def test_chart_is_an_svg_with_one_line_per_provider(loaded):
    svg = chart_svg(cost_report(loaded, "axis_failures", *WINDOW))
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    for provider in ("AWS", "Google Cloud", "Microsoft"):
        assert provider in svg
    assert svg == chart_svg(cost_report(loaded, "axis_failures", *WINDOW))  # deterministic
