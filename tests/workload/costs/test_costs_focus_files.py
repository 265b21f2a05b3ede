"""FOCUS export files (Parquet as AWS writes them, CSV as Azure and GCP write them) and bad input handling."""

from __future__ import annotations

import csv
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import SAMPLES
from sqlalchemy import func, select

from costs.focus import CostDataError
from costs.ingest import IngestError, ingest
from costs.sources.focus_files import FocusFileSource
from costs.store import cost_rows

AWS = "aws/mledge-focus/data/**/*.parquet"
AZURE = "azure/mledge-focuscost/**/*.csv"
GCP = "gcp/*.csv"
NOV_14, NOV_21 = date(2026, 11, 14), date(2026, 11, 21)


def csv_rows(pattern: str, root: Path = SAMPLES) -> list[dict]:
    rows = []
    for path in sorted(root.glob(pattern)):
        with path.open(newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("pattern", [AWS, AZURE, GCP], ids=["aws-parquet", "azure-csv", "gcp-csv"])
def test_samples_cover_30_days_ending_2026_11_20(pattern):
    source = FocusFileSource("s", [pattern], base=SAMPLES)
    rows = list(source.rows(date(2026, 10, 1), date(2026, 12, 1)))
    days = {r.charge_period_start.date() for r in rows}
    assert min(days) == date(2026, 10, 22) and max(days) == date(2026, 11, 20) and len(days) == 30
    assert source.latest_day() == date(2026, 11, 20)
    categories = {r.charge_category for r in rows}
    assert categories >= {"Usage", "Credit"} and len(categories) >= 3
    assert all(isinstance(r.billed_cost, Decimal) and isinstance(r.effective_cost, Decimal) for r in rows)
    projects = {r.tags.get("mledge-project") or r.tags.get("user:mledge-project") for r in rows}
    assert projects == {"axis_failures", "vision_qc", None}


def test_csv_amounts_are_exact_and_timestamps_utc():
    """Every BilledCost of the Azure CSV comes back as the exact decimal in the file."""
    source = FocusFileSource("azure", [AZURE], base=SAMPLES)
    parsed = sorted((r.charge_period_start, r.service_name, r.billed_cost) for r in
                    source.rows(date(2026, 10, 1), date(2026, 12, 1)))
    raw = sorted((datetime.fromisoformat(r["ChargePeriodStart"].replace("Z", "")), r["ServiceName"],
                  Decimal(r["BilledCost"])) for r in csv_rows(AZURE))
    assert parsed == raw


def test_gcp_bigquery_style_timestamps_and_json_tags():
    row = next(iter(FocusFileSource("gcp", [GCP], base=SAMPLES).rows(NOV_14, NOV_14.replace(day=15))))
    assert row.charge_period_start == datetime(2026, 11, 14)
    assert row.tags["mledge-project"] == "axis_failures"


def test_parquet_tags_map_and_double_amounts():
    """AWS Parquet: Tags is a map with user tags under `user:`, amounts are doubles read by shortest repr."""
    rows = list(FocusFileSource("aws", [AWS], base=SAMPLES).rows(NOV_14, NOV_21))
    tagged = [r for r in rows if r.tags.get("user:mledge-project") == "axis_failures"]
    assert tagged and all(r.tags.get("user:mledge-site") in (None, "plant_a") for r in tagged)
    assert all(r.billed_cost == r.billed_cost.quantize(Decimal("1E-10")) for r in rows)


def test_missing_column_fails_every_day_and_writes_nothing(sqlite_store, samples_copy):
    path = samples_copy / "gcp" / "focus_export_20261022_20261120.csv"
    rows = csv_rows(GCP, samples_copy)
    fields = [f for f in rows[0] if f != "BillingCurrency"]
    write_csv(path, [{k: v for k, v in r.items() if k in fields} for r in rows], fields)
    source = FocusFileSource("gcp-broken", [str(path)])
    with pytest.raises(IngestError) as failure:
        ingest(source, sqlite_store, NOV_14, NOV_21)
    message = str(failure.value)
    assert "gcp-broken" in message and "BillingCurrency" in message and "column missing" in message
    assert failure.value.days == [date(2026, 11, d) for d in range(14, 21)]
    assert sqlite_store.count("gcp-broken") == 0
    quarantined = sqlite_store.quarantined("gcp-broken")
    assert len(quarantined) == 7 and {q["field"] for q in quarantined} == {"BillingCurrency"}


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("BilledCost", "12,50 EUR", "is not a number"),
    ("EffectiveCost", "", "is empty"),
    ("BillingCurrency", "XYZ", "not an ISO 4217 currency code"),
    ("ChargeCategory", "Discount", "is not one of"),
])
def test_bad_row_fails_only_its_day_and_keeps_earlier_data(sqlite_store, samples_copy, field, value, problem):
    path = samples_copy / "gcp" / "focus_export_20261022_20261120.csv"
    source = FocusFileSource("gcp", [str(path)])
    ingest(source, sqlite_store, NOV_14, NOV_21)
    before = sqlite_store.totals("gcp")
    counts_before = sqlite_store.count("gcp")

    rows = csv_rows(GCP, samples_copy)
    bad_index = next(i for i, r in enumerate(rows) if r["ChargePeriodStart"].startswith("2026-11-17"))
    rows[bad_index][field] = value
    for r in rows:  # every other day changes, so a skipped write would show
        if not r["ChargePeriodStart"].startswith("2026-11-17"):
            r["BilledCost"] = str(Decimal(r["BilledCost"]) + 1)
    write_csv(path, rows, list(rows[0]))

    with pytest.raises(IngestError) as failure:
        ingest(FocusFileSource("gcp", [str(path)]), sqlite_store, NOV_14, NOV_21)
    error = failure.value
    assert error.days == [date(2026, 11, 17)]
    assert error.source == "gcp" and error.field == field and problem in error.problem
    assert f"line {bad_index + 2}" in error.location  # the header is line 1
    assert "gcp" in str(error) and field in str(error)

    assert sqlite_store.count("gcp") == counts_before
    after = sqlite_store.totals("gcp")
    changed_days = 6
    rows_per_day = counts_before // 7
    assert after["BilledCost"] == before["BilledCost"] + changed_days * rows_per_day
    # the bad day kept its earlier rows: the store's Nov 17 equals the original export's Nov 17
    original = sum(Decimal(r["BilledCost"]) for r in csv_rows(GCP) if r["ChargePeriodStart"].startswith("2026-11-17"))
    with sqlite_store.engine.connect() as conn:
        stored = conn.execute(select(func.sum(cost_rows.c.BilledCost)).where(
            cost_rows.c.ChargePeriodStart >= datetime(2026, 11, 17),
            cost_rows.c.ChargePeriodStart < datetime(2026, 11, 18))).scalar_one()
    assert stored == original
    quarantined = sqlite_store.quarantined("gcp")
    assert len(quarantined) == 1 and quarantined[0]["field"] == field and value in (quarantined[0]["record"] or "")


def test_unreadable_timestamp_names_line(samples_copy):
    path = samples_copy / "gcp" / "focus_export_20261022_20261120.csv"
    rows = csv_rows(GCP, samples_copy)
    rows[3]["ChargePeriodStart"] = "yesterday"
    write_csv(path, rows, list(rows[0]))
    with pytest.raises(CostDataError, match=r"line 5.*ChargePeriodStart.*ISO 8601"):
        list(FocusFileSource("gcp", [str(path)]).rows(NOV_14, NOV_21))


def test_no_matching_file_is_unavailable(tmp_path):
    source = FocusFileSource("empty", [str(tmp_path / "*.csv")])
    assert "no FOCUS file" in source.unavailable()


def test_rows_out_of_day_order_fail_and_name_their_own_line(sqlite_store, samples_copy):
    """An export not written day by day: each day is still exactly its rows, a bad row is named by its line."""
    path = samples_copy / "gcp" / "focus_export_20261022_20261120.csv"
    rows = csv_rows(GCP, samples_copy)[::-1]
    bad_index = next(i for i, r in enumerate(rows) if r["ChargePeriodStart"].startswith("2026-11-17"))
    rows[bad_index]["BilledCost"] = "n/a"
    write_csv(path, rows, list(rows[0]))
    with pytest.raises(IngestError) as failure:
        ingest(FocusFileSource("gcp", [str(path)]), sqlite_store, NOV_14, NOV_21)
    assert failure.value.days == [date(2026, 11, 17)]
    assert failure.value.location.endswith(f"line {bad_index + 2}")
    expected = sum(Decimal(r["BilledCost"]) for r in rows if r["ChargePeriodStart"][:10] in
                   {f"2026-11-{d}" for d in (14, 15, 16, 18, 19, 20)})
    assert sqlite_store.totals("gcp")["BilledCost"] == expected


def test_a_value_postgresql_refuses_fails_only_its_day(pg_database, samples_copy):
    """PostgreSQL's binary COPY refuses a ProviderName longer than its column: that day fails, the others go in."""
    from costs.store import CostStore

    store = CostStore(pg_database)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM cost_rows")
        path = samples_copy / "gcp" / "focus_export_20261022_20261120.csv"
        rows = csv_rows(GCP, samples_copy)
        for r in rows:
            if r["ChargePeriodStart"].startswith("2026-11-17"):
                r["ProviderName"] = "G" * 150
        write_csv(path, rows, list(rows[0]))
        with pytest.raises(IngestError) as failure:
            ingest(FocusFileSource("gcp-long", [str(path)]), store, NOV_14, NOV_21)
        assert failure.value.days == [date(2026, 11, 17)] and failure.value.field == "(database)"
        kept = [r for r in rows if r["ChargePeriodStart"][:10] in {f"2026-11-{d}" for d in (14, 15, 16, 18, 19, 20)}]
        assert store.count("gcp-long") == len(kept)
        assert store.totals("gcp-long")["BilledCost"] == sum(Decimal(r["BilledCost"]) for r in kept)
    finally:
        store.dispose()
