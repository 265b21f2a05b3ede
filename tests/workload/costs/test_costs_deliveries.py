"""Billing reliability (issue 19): one delivery per source and period, overlaps named, a day only replaced by a
complete delivery, overflow and bad amounts quarantining one day, and the command line's JSON on failure."""

from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from costs.ingest import IngestError, ingest
from costs.sources.focus_files import FocusFileSource

GCP = "gcp/focus_export_20261022_20261120.csv"
NOV_14, NOV_21 = date(2026, 11, 14), date(2026, 11, 21)


def read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields or list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def later(path: Path, seconds: int = 60) -> None:
    """Make ``path`` newer than everything else (a later delivery)."""
    stamp = max(p.stat().st_mtime for p in path.parent.iterdir()) + seconds
    os.utime(path, (stamp, stamp))


def test_a_rerun_export_of_a_period_replaces_it_and_doubles_nothing(any_store, samples_copy):
    original = samples_copy / GCP
    source = FocusFileSource("gcp", [str(samples_copy / "gcp" / "*.csv")])
    ingest(source, any_store, NOV_14, NOV_21)
    count, before = any_store.count("gcp"), any_store.totals("gcp")["BilledCost"]
    rerun = original.with_name("focus_export_20261022_20261120_rerun.csv")
    rows = read(original)
    for row in rows:
        row["BilledCost"] = str(Decimal(row["BilledCost"]) + 1)
    write(rerun, rows)
    later(rerun)
    result = ingest(source, any_store, NOV_14, NOV_21)
    assert any_store.count("gcp") == count  # the same charges, not twice
    assert any_store.totals("gcp")["BilledCost"] == before + count  # the newer delivery's amounts
    assert {d["action"] for d in result.days} == {"replaced"}
    assert {d["delivery"].split("/")[-1] for d in result.days} == {"focus_export_20261022_20261120_rerun.csv"}
    again = ingest(source, any_store, NOV_14, NOV_21)
    assert {d["action"] for d in again.days} == {"unchanged"} and any_store.count("gcp") == count


def test_overlapping_deliveries_fail_the_shared_days_naming_both(sqlite_store, samples_copy):
    original = samples_copy / GCP
    source = FocusFileSource("gcp", [str(samples_copy / "gcp" / "*.csv")])
    ingest(source, sqlite_store, NOV_14, NOV_21)
    before = sqlite_store.totals("gcp")
    late = [r for r in read(original) if r["ChargePeriodStart"] >= "2026-11-17"]
    write(original.with_name("focus_export_20261117_20261130.csv"), late)
    with pytest.raises(IngestError) as failure:
        ingest(source, sqlite_store, NOV_14, NOV_21)
    error = failure.value
    assert error.days == [date(2026, 11, d) for d in range(17, 21)]  # the days both cover
    assert "focus_export_20261022_20261120.csv" in str(error) and "focus_export_20261117_20261130.csv" in str(error)
    assert sqlite_store.totals("gcp") == before  # nothing lost, nothing doubled
    assert {q["field"] for q in sqlite_store.quarantined("gcp")} == {"(delivery)"}
    assert [d["action"] for d in error.result.days if "action" in d] == ["unchanged"] * 3  # Nov 14-16 went on


def test_a_header_only_delivery_keeps_the_stored_days(any_store, samples_copy):
    folder = samples_copy / "azure" / "mledge-focuscost" / "20261101-20261130"
    source = FocusFileSource("azure", [str(samples_copy / "azure" / "mledge-focuscost" / "**" / "*.csv")])
    ingest(source, any_store, NOV_14, NOV_21)
    before, count = any_store.totals("azure"), any_store.count("azure")
    part = folder / "part_0_0001.csv"
    header = part.read_text().splitlines()[0]
    part.write_text(header + "\n")
    with pytest.raises(IngestError, match="has a header and no rows") as failure:
        ingest(source, any_store, NOV_14, NOV_21)
    assert len(failure.value.errors()) == 1 and len(failure.value.days) == 7  # one problem, named once
    assert any_store.totals("azure") == before and any_store.count("azure") == count


def test_a_missing_period_keeps_the_stored_days(any_store, samples_copy):
    root = samples_copy / "azure" / "mledge-focuscost"
    source = FocusFileSource("azure", [str(root / "**" / "*.csv")])
    ingest(source, any_store, date(2026, 10, 25), date(2026, 11, 3))
    before = any_store.totals("azure")
    shutil.rmtree(root / "20261001-20261031")
    result = ingest(source, any_store, date(2026, 10, 25), date(2026, 11, 3))
    kept = [d for d in result.days if "kept" in d]
    assert [d["day"] for d in kept] == [f"2026-10-{d}" for d in range(25, 32)]
    assert "no delivery covers" in kept[0]["kept"]
    assert any_store.totals("azure") == before


def _azure_run(root: Path, run: str, rows: list[dict], *, submitted: str, listed: list[str] | None = None,
               count: int | None = None) -> Path:
    folder = root / "20261101-20261130" / run
    write(folder / "part_0_0001.csv", rows)
    blobs = [{"blobName": f"export/20261101-20261130/{run}/{name}", "dataRowCount": count if count is not None
              else len(rows)} for name in (listed or ["part_0_0001.csv"])]
    (folder / "manifest.json").write_text(json.dumps({
        "manifestVersion": "2024-04-01", "dataRowCount": sum(b["dataRowCount"] for b in blobs), "blobCount": len(blobs),
        "exportConfig": {"type": "FocusCost"},
        "runInfo": {"executionType": "Scheduled", "submittedTime": submitted, "runId": run,
                    "startDate": "2026-11-01T00:00:00", "endDate": "2026-11-30T00:00:00"},
        "blobs": blobs}))
    return folder


def test_azure_run_folders_with_manifests(sqlite_store, samples_copy, tmp_path):
    rows = [r for r in read(samples_copy / "azure" / "mledge-focuscost" / "20261101-20261130" / "part_0_0001.csv")
            if r["ChargePeriodStart"] < "2026-11-21"]
    root = tmp_path / "export"
    _azure_run(root, "run-a", rows, submitted="2026-11-21T06:00:00Z")
    source = FocusFileSource("azure", [str(root / "**" / "*.csv")])
    ingest(source, sqlite_store, NOV_14, NOV_21)
    first = sqlite_store.totals("azure")["BilledCost"]
    newer = [{**r, "BilledCost": str(Decimal(r["BilledCost"]) * 2)} for r in rows]
    _azure_run(root, "run-b", newer, submitted="2026-11-22T06:00:00Z")  # a later run of the same period
    ingest(source, sqlite_store, NOV_14, NOV_21)
    assert sqlite_store.totals("azure")["BilledCost"] == 2 * first
    # a still newer run whose manifest lists a part that is not there: incomplete, nothing replaced
    _azure_run(root, "run-c", rows, submitted="2026-11-23T06:00:00Z", listed=["part_0_0001.csv", "part_0_0002.csv"])
    with pytest.raises(IngestError, match="part_0_0002.csv, which is not here"):
        ingest(source, sqlite_store, NOV_14, NOV_21)
    assert sqlite_store.totals("azure")["BilledCost"] == 2 * first
    _azure_run(root, "run-c", rows, submitted="2026-11-23T06:00:00Z", count=len(rows) + 5)
    with pytest.raises(IngestError, match=f"manifest counts {len(rows) + 5} rows, the files have {len(rows)}"):
        ingest(source, sqlite_store, NOV_14, NOV_21)
    _azure_run(root, "run-c", rows, submitted="2026-11-23T06:00:00Z")
    ingest(source, sqlite_store, NOV_14, NOV_21)
    assert sqlite_store.totals("azure")["BilledCost"] == first


def test_equally_new_deliveries_of_a_period_are_an_error(sqlite_store, samples_copy):
    original = samples_copy / GCP
    twin = original.with_name("focus_export_20261022_20261120_copy.csv")
    shutil.copy(original, twin)
    stamp = original.stat().st_mtime
    os.utime(twin, (stamp, stamp))
    with pytest.raises(IngestError, match="equally new"):
        ingest(FocusFileSource("gcp", [str(samples_copy / "gcp" / "*.csv")]), sqlite_store, NOV_14, NOV_21)
    assert sqlite_store.count("gcp") == 0


@pytest.mark.parametrize(("value", "problem"), [
    ("1e18", "out of range"), ("922337204", "out of range"), ("-1E+30", "out of range"), ("12,5", "not a number"),
    ("NaN", "not a number"),
])
def test_overflow_and_bad_amounts_quarantine_only_their_day(any_store, samples_copy, value, problem):
    path = samples_copy / GCP
    rows = read(path)
    bad = next(i for i, r in enumerate(rows) if r["ChargePeriodStart"].startswith("2026-11-17"))
    rows[bad]["EffectiveCost"] = value
    write(path, rows)
    with pytest.raises(IngestError) as failure:
        ingest(FocusFileSource("gcp", [str(path)]), any_store, NOV_14, NOV_21)
    error = failure.value
    assert error.days == [date(2026, 11, 17)]
    assert error.field == "EffectiveCost" and problem in error.problem and f"line {bad + 2}" in error.location
    assert any_store.count("gcp") == sum(1 for r in rows if "2026-11-14" <= r["ChargePeriodStart"][:10] < "2026-11-21"
                                         and not r["ChargePeriodStart"].startswith("2026-11-17"))
    quarantined = any_store.quarantined("gcp")
    assert len(quarantined) == 1 and quarantined[0]["field"] == "EffectiveCost" and value in quarantined[0]["record"]


def test_only_a_changed_day_is_rewritten(any_store, samples_copy):
    path = samples_copy / GCP
    source = FocusFileSource("gcp", [str(path)])
    ingest(source, any_store, NOV_14, NOV_21)
    before = any_store.totals("gcp")["EffectiveCost"]
    rows = read(path)
    changed = [r for r in rows if r["ChargePeriodStart"].startswith("2026-11-17")]
    for row in changed:
        row["EffectiveCost"] = str(Decimal(row["EffectiveCost"]) + Decimal("0.5"))
    gone = changed.pop()  # and one charge disappears from the re-issued day
    rows.remove(gone)
    write(path, rows)
    result = ingest(source, any_store, NOV_14, NOV_21)
    actions = {d["day"]: d["action"] for d in result.days}
    assert actions.pop("2026-11-17") == "replaced" and set(actions.values()) == {"unchanged"}
    # the six changed rows gained 0.5 each; the gone one (already raised by 0.5 above) left with its old amount
    assert any_store.totals("gcp")["EffectiveCost"] == (before + Decimal("0.5") * len(changed)
                                                        - (Decimal(gone["EffectiveCost"]) - Decimal("0.5")))


def test_the_command_line_prints_json_when_a_run_fails(samples_copy, tmp_path, monkeypatch, capsys):
    from mledge.cli import main

    path = samples_copy / GCP
    rows = read(path)
    write(path, [{k: v for k, v in r.items() if k != "BillingCurrency"} for r in rows])  # a file-level problem
    sources = tmp_path / "sources.toml"
    sources.write_text(f'[[source]]\nname = "gcp"\nkind = "focus_files"\npaths = ["{path}"]\n')
    monkeypatch.setenv("MLEDGE_COST_SOURCES", str(sources))
    monkeypatch.setenv("MLEDGE_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_URI", "FLWR_HOME", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):  # main() sets these; keep them from leaking
        monkeypatch.setenv(name, os.environ.get(name, "unused-by-this-test"))
    code = main(["costs", "ingest", "--source", "gcp", "--from", "2026-11-14", "--to", "2026-11-21"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 1
    assert summary["status"] == "partial" and summary["source"] == "gcp" and len(summary["failed_days"]) == 7
    assert len(summary["errors"]) == 1  # the file-level problem once, with its seven days
    assert summary["errors"][0]["field"] == "BillingCurrency" and len(summary["errors"][0]["days"]) == 7
    assert "column missing" in summary["errors"][0]["problem"] and summary["days"][0]["rows"] == 0
