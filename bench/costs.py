"""Cost store ingestion speed: 1,000,000 FOCUS rows into SQLite and PostgreSQL, re-ingested, against a naive ORM.

``python -m bench.costs`` (``make bench-costs``) writes ``bench/results/costs.json`` and ``costs.md``.

- Data: a FOCUS 1.2 export as AWS Data Exports writes it (Parquet part files under ``data/BILLING_PERIOD=...``,
  all 57 columns, amounts as doubles, timestamps with a zone, Tags as a map), written before the clock starts:
  synthetic, seeded, about 1,400 resources a day each billed hourly, three providers, commitment discounts on a
  fifth of the rows. What is timed is ``costs.ingest.ingest`` of a ``FocusFileSource``: reading the delivery,
  checking every column, project attribution, natural keys, one transaction per day into the store.
- Each database starts empty (a temporary SQLite file; a fresh, uniquely named PostgreSQL database, dropped after).
  Phases: first ingest; the same delivery again (unchanged days are recognised and not rewritten); a re-issued
  export (a newer delivery of the month with every amount changed: every day rewritten through the staging table
  and one upsert); the re-issued one again. Counts and exact totals are compared after each phase.
- Baseline, in the same run on each database: a naive row-by-row SQLAlchemy ORM insert of ``--naive-rows`` rows of
  the same data (``session.add`` + ``flush`` per row, a commit per day) into an empty table.
- PostgreSQL: ``MLEDGE_BENCH_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``);
  unreachable: recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PG_ENV = "MLEDGE_BENCH_PG_URL"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGETS = {"postgresql": 150_000, "sqlite": 100_000}
TARGET_SPEEDUP = 10.0
FIRST_DAY = date(2026, 10, 1)
PART_ROWS = 250_000

log = logging.getLogger("bench.costs")

SERVICES = {
    "AWS": [("AmazonEC2", "Compute"), ("AmazonS3", "Storage"), ("AWSDataTransfer", "Networking"),
            ("AmazonSageMaker", "AI and Machine Learning"), ("AmazonCloudWatch", "Management and Governance"),
            ("AmazonRDS", "Databases"), ("AWSLambda", "Compute")],
    "Google Cloud": [("Compute Engine", "Compute"), ("Cloud Storage", "Storage"), ("Vertex AI", "AI and Machine "
                     "Learning"), ("BigQuery", "Databases"), ("Networking", "Networking"), ("Cloud SQL", "Databases")],
    "Microsoft": [("Virtual Machines", "Compute"), ("Storage", "Storage"), ("Azure Machine Learning",
                  "AI and Machine Learning"), ("Bandwidth", "Networking"), ("Log Analytics", "Management and "
                  "Governance"), ("Azure SQL Database", "Databases"), ("Azure Kubernetes Service", "Compute")],
}
REGIONS = {"AWS": ["eu-central-1", "us-east-1"], "Google Cloud": ["europe-west4", "us-central1"],
           "Microsoft": ["eastus", "westeurope"]}
PROJECTS = ["axis_failures", "vision_qc", "forecasting", None]


def synthetic_export(folder: Path, rows: int, days: int, *, seed: int = 7, scale: float = 1.0) -> Path:
    """A FOCUS 1.2 Parquet export of ``rows`` rows over ``days`` days; returns the delivery's folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from costs.focus import ALL_FOCUS_COLUMNS

    rng = np.random.default_rng(seed)
    per_day = -(-rows // days)
    resources = -(-per_day // 24)
    n = rows
    index = np.arange(n)
    day = index // per_day
    within = index % per_day
    resource = within % resources
    hour = within // resources
    providers = np.array(list(SERVICES))
    provider = providers[resource % 3]
    service_index = (resource // 3) % 6
    services = {p: np.array([s for s, _ in SERVICES[p]]) for p in SERVICES}
    categories = {p: np.array([c for _, c in SERVICES[p]]) for p in SERVICES}
    service = np.empty(n, dtype=object)
    category = np.empty(n, dtype=object)
    region = np.empty(n, dtype=object)
    for p in SERVICES:
        mask = provider == p
        service[mask] = services[p][service_index[mask] % len(services[p])]
        category[mask] = categories[p][service_index[mask] % len(categories[p])]
        region[mask] = np.array(REGIONS[p])[resource[mask] % 2]
    start_ts = (np.datetime64(FIRST_DAY, "us") + day.astype("timedelta64[D]") + hour.astype("timedelta64[h]"))
    period = np.datetime64(FIRST_DAY.replace(day=1), "us")
    period_end = np.datetime64((FIRST_DAY.replace(day=1) + timedelta(days=32)).replace(day=1), "us")
    listed = np.round(rng.uniform(0.001, 5.0, n) * scale, 6)
    effective = np.round(listed * rng.uniform(0.6, 1.0, n), 6)
    sku = resource % 500
    unit_list = np.round(rng.uniform(0.01, 3.0, 500), 10)[sku]  # prices are per SKU
    unit_contracted = np.round(unit_list * 0.8, 10)
    committed = resource % 5 == 0
    credit = index % 50 == 0
    tag_keys = [{"mledge-project": p, "mledge-site": f"plant_{s}", "owner": f"team-{t}"} if p else {"owner": "ops"}
                for p in PROJECTS for s in "abc" for t in ("data", "ml")]
    tags = [list(tag_keys[i % len(tag_keys)].items()) for i in range(len(tag_keys))]
    tag_index = resource % len(tag_keys)
    resource_ids = np.array([f"arn:aws:ec2:{REGIONS['AWS'][r % 2]}:100000000001:instance/i-{r:017x}"
                             for r in range(resources)], dtype=object)
    text = {
        "AvailabilityZone": np.where(resource % 3 == 0, region.astype(str) + "a", None),
        "BillingAccountId": np.array(["100000000001", "100000000002"])[resource % 2],
        "BillingAccountName": np.array(["ExampleCorp Master Payer", "ExampleCorp Secondary Payer"])[resource % 2],
        "BillingAccountType": np.full(n, "Payer Account"),
        "BillingCurrency": np.full(n, "USD"),
        "ChargeCategory": np.where(credit, "Credit", np.where(committed, "Usage", "Usage")),
        "ChargeClass": np.full(n, None),
        "ChargeDescription": service.astype(str) + " usage",
        "ChargeFrequency": np.full(n, "Usage-Based"),
        "CommitmentDiscountCategory": np.where(committed, "Spend", None),
        "CommitmentDiscountId": np.where(committed, "arn:aws:savingsplans::100000000001:savingsplan/sp-1", None),
        "CommitmentDiscountName": np.where(committed, "ComputeSavingsPlan-1yr", None),
        "CommitmentDiscountStatus": np.where(committed, "Used", None),
        "CommitmentDiscountType": np.where(committed, "Savings Plan", None),
        "CommitmentDiscountUnit": np.where(committed, "USD", None),
        "CapacityReservationId": np.full(n, None),
        "CapacityReservationStatus": np.full(n, None),
        "ConsumedUnit": np.full(n, "Hours"),
        "InvoiceId": np.full(n, "INV-2026-10-0001"),
        "InvoiceIssuerName": provider,
        "PricingCategory": np.where(committed, "Committed", "Standard"),
        "PricingCurrency": np.full(n, "USD"),
        "PricingUnit": np.full(n, "Hours"),
        "ProviderName": provider,
        "PublisherName": provider,
        "RegionId": region,
        "RegionName": region,
        "ResourceId": resource_ids[resource],
        "ResourceName": np.char.add("i-", (resource % 100000).astype(str)),
        "ResourceType": np.full(n, "Instance"),
        "ServiceCategory": category,
        "ServiceName": service,
        "ServiceSubcategory": category,
        "SkuId": np.char.add("SKU-", (resource % 500).astype(str)),
        "SkuMeter": np.full(n, "Compute"),
        "SkuPriceDetails": np.full(n, '{"InstanceType":"m6i.large"}'),
        "SkuPriceId": np.char.add("PRICE-", (resource % 500).astype(str)),
        "SubAccountId": np.char.add("2000000000", (resource % 4).astype(str)),
        "SubAccountName": np.array(["prod", "staging", "data", "sandbox"])[resource % 4],
        "SubAccountType": np.full(n, "Linked Account"),
    }
    numbers = {
        "BilledCost": np.where(committed, 0.0, np.where(credit, -effective, effective)),
        "EffectiveCost": np.where(credit, -effective, effective), "ListCost": listed, "ContractedCost": effective,
        "ListUnitPrice": unit_list, "ContractedUnitPrice": unit_contracted, "PricingQuantity": np.ones(n),
        "ConsumedQuantity": np.ones(n), "CommitmentDiscountQuantity": np.where(committed, effective, np.nan),
        "PricingCurrencyContractedUnitPrice": unit_contracted, "PricingCurrencyEffectiveCost": effective,
        "PricingCurrencyListUnitPrice": unit_list,
    }
    columns: dict[str, pa.Array] = {}
    for name in ALL_FOCUS_COLUMNS:
        if name in text:
            columns[name] = pa.array(text[name], pa.string())
        elif name in numbers:
            values = numbers[name]
            columns[name] = pa.array(values, pa.float64(), mask=np.isnan(values))
        elif name == "Tags":
            columns[name] = pa.array([tags[i] for i in range(len(tags))], pa.map_(pa.string(), pa.string())).take(
                pa.array(tag_index))
        elif name in ("ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd"):
            values = {"ChargePeriodStart": start_ts, "ChargePeriodEnd": start_ts + np.timedelta64(1, "h"),
                      "BillingPeriodStart": np.full(n, period), "BillingPeriodEnd": np.full(n, period_end)}[name]
            columns[name] = pa.array(values, pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    table = pa.table(columns)
    target = folder / "data" / f"BILLING_PERIOD={FIRST_DAY:%Y-%m}"
    target.mkdir(parents=True, exist_ok=True)
    for part, offset in enumerate(range(0, n, PART_ROWS), start=1):
        pq.write_table(table.slice(offset, PART_ROWS), target / f"bench-focus-{part:05d}.snappy.parquet",
                       compression="snappy")
    return target


def timed_ingest(store, source, start: date, end: date) -> dict:
    """Wall seconds, rows, this process's CPU seconds, and what happened to the days."""
    from costs.ingest import ingest

    gc.collect()
    began, cpu = time.perf_counter(), time.process_time()
    result = ingest(source, store, start, end)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
    actions: dict[str, int] = {}
    for entry in result.days:
        actions[entry.get("action", "kept")] = actions.get(entry.get("action", "kept"), 0) + 1
    return {"rows": result.rows, "seconds": round(seconds, 3), "rows_per_s": round(result.rows / seconds),
            "process_cpu_s": round(cpu_seconds, 3), "days": actions}


def naive_orm_insert(url: str, folder: Path, limit: int) -> dict:
    """Row-by-row ORM inserts (add + flush per row, a commit per day) of the first ``limit`` rows, empty table."""
    from sqlalchemy.orm import Session, registry

    from costs.ingest import prepare
    from costs.sources.focus_files import FocusFileSource
    from costs.store import CostStore, cost_rows

    source = FocusFileSource("naive", [str(folder / "*.parquet")])
    store = CostStore(url)
    with store.engine.begin() as conn:
        conn.execute(cost_rows.delete())

    class NaiveRow:
        pass

    mapper_registry = registry()
    mapper_registry.map_imperatively(NaiveRow, cost_rows)
    from costs.focus import TagRule

    batches, taken, day = [], 0, FIRST_DAY
    while taken < limit:  # the same rows the fast path writes, prepared before the clock
        batch = prepare(source.batch(day), TagRule(), "naive")
        records = batch.table.slice(0, limit - taken).to_pylist()
        batches.append(records)
        taken += len(records)
        day += timedelta(days=1)
    began = time.perf_counter()
    with Session(store.engine) as session:
        for records in batches:
            for record in records:
                orm = NaiveRow()
                for name, value in record.items():
                    setattr(orm, name, value)
                orm.x_source = "naive"
                session.add(orm)
                session.flush()
            session.commit()
    seconds = time.perf_counter() - began
    count = store.count("naive")
    store.dispose()
    return {"rows": taken, "seconds": round(seconds, 3), "rows_per_s": round(taken / seconds), "stored": count}


def prepare_only(folder: Path, days: int) -> dict:
    """Reading and preparing every day without a database: what the parsing side costs on its own."""
    from costs.focus import TagRule
    from costs.ingest import prepare
    from costs.sources.focus_files import FocusFileSource

    source = FocusFileSource("prepare", [str(folder / "*.parquet")])
    gc.collect()
    began, cpu = time.perf_counter(), time.process_time()
    rows = 0
    for offset in range(days):
        batch = prepare(source.batch(FIRST_DAY + timedelta(days=offset)), TagRule(), "prepare")
        rows += batch.table.num_rows
    seconds = time.perf_counter() - began
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "process_cpu_s": round(time.process_time() - cpu, 3)}


def run_database(label: str, url: str, scratch: Path, export: Path, reissue: Path, days: int,
                 naive_rows: int) -> dict:
    from costs.sources.focus_files import FocusFileSource
    from costs.store import CostStore

    start, end = FIRST_DAY, FIRST_DAY + timedelta(days=days)
    live = scratch / f"{label}-export"
    target = live / "data" / export.name
    target.mkdir(parents=True)
    for part in sorted(export.glob("*.parquet")):
        (target / part.name).symlink_to(part)
    source = FocusFileSource("bench", [str(target / "*.parquet")])
    store = CostStore(url)
    phases = {}
    log.info("%s: first ingest", label)
    phases["first_ingest"] = timed_ingest(store, source, start, end)
    first = (store.count(), store.totals())
    log.info("%s: %s; the same delivery again", label, phases["first_ingest"])
    phases["reingest_unchanged"] = timed_ingest(store, source, start, end)
    again = (store.count(), store.totals())
    # a re-issued export of the month: a newer run folder, every amount changed (the old one stays beside it)
    newer = live / "data" / export.name / "rerun"
    newer.mkdir()
    for part in sorted(reissue.glob("*.parquet")):
        (newer / part.name).symlink_to(part)
    (target / "run-1").mkdir()
    for old in target.glob("*.parquet"):  # the month's files now live in run folders: the old run, a newer run
        old.rename(target / "run-1" / old.name)
    source = FocusFileSource("bench", [str(target / "**" / "*.parquet")])
    log.info("%s: %s; a re-issued export", label, phases["reingest_unchanged"])
    phases["reingest_reissued"] = timed_ingest(store, source, start, end)
    reissued = (store.count(), store.totals())
    phases["reingest_reissued_again"] = timed_ingest(store, source, start, end)
    reissued_again = (store.count(), store.totals())
    log.info("%s: %s", label, phases["reingest_reissued"])
    store.dispose()
    naive = naive_orm_insert(url, export, naive_rows)
    log.info("%s: naive ORM %s", label, naive)
    rows = phases["first_ingest"]["rows"]
    return {
        "status": "measured",
        "rows": rows,
        "phases": phases,
        "count_and_totals": {
            "after_first": {"count": first[0], "totals": {k: str(v) for k, v in first[1].items()}},
            "after_rerun": {"count": again[0], "totals": {k: str(v) for k, v in again[1].items()}},
            "after_reissue": {"count": reissued[0], "totals": {k: str(v) for k, v in reissued[1].items()}},
            "after_reissue_rerun": {"count": reissued_again[0],
                                    "totals": {k: str(v) for k, v in reissued_again[1].items()}},
        },
        "rerun_changes_nothing": first == again and reissued == reissued_again and first[0] == rows,
        "reissue_replaced_every_row": reissued[0] == rows and reissued[1] != first[1],
        "naive_orm": naive,
        "speedup_vs_naive": {phase: round(result["rows_per_s"] / naive["rows_per_s"], 1)
                             for phase, result in phases.items()},
    }


def postgres_database(server_url: str):
    """Create a uniquely named database; returns (url, drop) or raises when the server is unreachable."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"mledge_costs_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(server_url).set(database=name).render_as_string(hide_password=False), drop


def calibration_cpu_s() -> float:
    """CPU seconds of a fixed pure-Python loop (about 0.15 s on an idle modern core): how slow this machine was."""
    began = time.process_time()
    sum(range(10_000_000))
    return round(time.process_time() - began, 3)


def environment() -> dict:
    import pyarrow
    import sqlalchemy

    env = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
           "sqlalchemy": sqlalchemy.__version__, "pyarrow": pyarrow.__version__, "load_average": os.getloadavg(),
           "calibration_loop_cpu_s": calibration_cpu_s()}
    try:
        import adbc_driver_manager

        env["adbc_driver_manager"] = adbc_driver_manager.__version__
    except ImportError:
        pass
    try:
        import sqlite3

        env["sqlite"] = sqlite3.sqlite_version
    except ImportError:
        pass
    return env


PHASES = {"first_ingest": "first ingest", "reingest_unchanged": "same delivery again",
          "reingest_reissued": "re-issued export (every amount changed)", "reingest_reissued_again": "re-issued again"}


def markdown(report: dict) -> str:
    lines = [
        "# Cost store ingestion speed",
        "",
        f"{report['rows']:,} FOCUS 1.2 rows (Parquet, 57 columns) over {report['days']} days; naive baseline: "
        f"{report['naive_rows']:,} rows row by row through the SQLAlchemy ORM, measured in the same run. Targets: "
        + ", ".join(f"{k} {v:,} rows/s" for k, v in TARGETS.items()) + f", {TARGET_SPEEDUP:g}x the naive path.",
        "",
        "| database | phase | rows/s (wall) | seconds | rows per CPU-second of the ingesting process | days | "
        "x naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in report["databases"].items():
        if result.get("status") != "measured":
            lines.append(f"| {name} | skipped: {result.get('reason')} | | | | | |")
            continue
        for phase, label in PHASES.items():
            entry = result["phases"][phase]
            cpu = entry["process_cpu_s"]
            lines.append(f"| {name} | {label} | {entry['rows_per_s']:,} | {entry['seconds']} | "
                         f"{round(entry['rows'] / cpu):,} | {entry['days']} | "
                         f"{result['speedup_vs_naive'][phase]}x |")
        lines.append(f"| {name} | naive ORM ({result['naive_orm']['rows']:,} rows) | "
                     f"{result['naive_orm']['rows_per_s']:,} | {result['naive_orm']['seconds']} | | | 1x |")
    prep = report.get("prepare_only")
    if prep:
        lines += ["", f"Reading and preparing the {prep['rows']:,} rows without a database: {prep['rows_per_s']:,} "
                  f"rows/s ({prep['seconds']} s wall, {prep['process_cpu_s']} CPU-s)."]
    env = report["environment"]
    lines += ["", "Targets met: " + ", ".join(f"{k}: {v}" for k, v in report["targets_met"].items()), "",
              f"Machine load: load average {_loads(env.get('load_average_before'))} before and "
              f"{_loads(env.get('load_average'))} after on {env.get('cpus')} CPUs; a fixed Python loop took "
              f"{env.get('calibration_loop_cpu_s')} CPU-s (about 0.15 on an idle modern core). Wall-clock rates "
              "include waiting for a CPU; the CPU-second rates do not (for PostgreSQL they leave out the server).",
              "", f"Environment: {json.dumps(env)}", ""]
    return "\n".join(lines)


def _loads(values) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "n/a"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--naive-rows", type=int, default=50_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default="costs", help="file name of the results (without extension)")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    return parser.parse_args(argv)


def assemble(args: argparse.Namespace, databases: dict, prep: dict, load_before, calibration_before) -> dict:
    measured = {k: v for k, v in databases.items() if v.get("status") == "measured"}
    report = {
        "benchmark": "cost store ingestion (costs.ingest.ingest of a FocusFileSource, one transaction per day)",
        "rows": args.rows,
        "days": args.days,
        "naive_rows": args.naive_rows,
        "prepare_only": prep,
        "databases": databases,
        "targets": {"rows_per_s": TARGETS, "speedup_vs_naive": TARGET_SPEEDUP},
        "targets_met": {
            **{f"{k} first ingest >= {TARGETS[k]:,} rows/s": v["phases"]["first_ingest"]["rows_per_s"] >= TARGETS[k]
               for k, v in measured.items()},
            **{f"{k} re-issued export >= {TARGETS[k]:,} rows/s":
               v["phases"]["reingest_reissued"]["rows_per_s"] >= TARGETS[k] for k, v in measured.items()},
            **{f"{k} >= {TARGET_SPEEDUP:g}x naive (every phase)":
               min(v["speedup_vs_naive"].values()) >= TARGET_SPEEDUP for k, v in measured.items()},
            **{f"{k} re-run changes nothing": v["rerun_changes_nothing"] for k, v in measured.items()},
        },
        "environment": {**environment(), "load_average_before": load_before,
                        "calibration_loop_cpu_s_before": calibration_before},
        "finished_at": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
    }
    return report


def write(args: argparse.Namespace, report: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        report = json.loads((args.out / f"{args.name}.json").read_text())
        (args.out / f"{args.name}.md").write_text(markdown(report))
        print(markdown(report))
        return 0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("costs.ingest").setLevel(logging.WARNING)  # one line per day is noise here
    load_before = os.getloadavg()
    calibration_before = calibration_cpu_s()
    databases: dict[str, dict] = {}
    wanted = [d.strip() for d in args.databases.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="mledge-bench-costs-") as scratch_name:
        scratch = Path(scratch_name)
        log.info("writing %d FOCUS rows (and a re-issued copy) as Parquet", args.rows)
        export = synthetic_export(scratch / "export", args.rows, args.days)
        reissue = synthetic_export(scratch / "reissue", args.rows, args.days, scale=1.01)
        prep = prepare_only(export, args.days)
        log.info("prepare only: %s", prep)
        if "sqlite" in wanted:
            databases["sqlite"] = run_database("sqlite", f"sqlite:///{scratch}/costs.db", scratch, export, reissue,
                                               args.days, args.naive_rows)
            write(args, assemble(args, databases, prep, load_before, calibration_before))  # partial results
        if "postgresql" in wanted:
            server = os.environ.get(PG_ENV, PG_DEFAULT)
            try:
                url, drop = postgres_database(server)
            except Exception as exc:  # unreachable server: say so in the results
                databases["postgresql"] = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"[:300]}
            else:
                try:
                    databases["postgresql"] = run_database("postgresql", url, scratch, export, reissue, args.days,
                                                           args.naive_rows)
                finally:
                    drop()
    report = assemble(args, databases, prep, load_before, calibration_before)
    write(args, report)
    print(markdown(report))
    return 0  # a benchmark reports; targets_met says whether the numbers reached the targets


if __name__ == "__main__":
    sys.exit(main())
