"""Cost store ingestion speed: 1,000,000 FOCUS rows into SQLite and PostgreSQL, then again (idempotent re-run).

``python -m bench.costs`` (``make bench-costs``) writes ``bench/results/costs.json`` and ``costs.md``.

- Rows: synthetic FOCUS rows as connectors produce them (``CostRow``, Decimal amounts with 10 places, three
  providers, about 20 services, 6 regions, unique resource ids, project tags), seeded, spread over ``--days`` days.
  They are built before the clock starts: what is timed is ``costs.ingest.ingest`` from an in-memory source,
  i.e. the production path after a connector: validation, project resolution, natural-key digests,
  day-by-day transactions with the bulk upsert and the stale-row delete.
- Each database starts empty (a temporary SQLite file; a fresh, uniquely named PostgreSQL database, dropped
  afterwards). First ingest, then the same days again: rows/s for both, and the exact totals and row counts
  before and after the re-run (they must be equal).
- Baseline, measured in the same run on each database: a naive row-by-row SQLAlchemy ORM insert of the first
  ``--naive-rows`` rows (``session.add`` + ``flush`` per row, one commit per day) into an empty table.
- PostgreSQL: ``MLEDGE_BENCH_PG_URL`` (default ``postgresql+psycopg2://postgres@127.0.0.1:5432/postgres``);
  unreachable: recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PG_ENV = "MLEDGE_BENCH_PG_URL"
PG_DEFAULT = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TARGET_ROWS_PER_S = 100_000
TARGET_SPEEDUP = 10.0
FIRST_DAY = date(2026, 10, 1)

log = logging.getLogger("bench.costs")

SERVICES = {
    "AWS": [("Amazon Elastic Compute Cloud", "Compute"), ("Amazon Simple Storage Service", "Storage"),
            ("AWS Data Transfer", "Networking"), ("Amazon SageMaker", "AI and Machine Learning"),
            ("Amazon CloudWatch", "Management and Governance"), ("Amazon Relational Database Service", "Databases"),
            ("AWS Lambda", "Compute")],
    "Google Cloud": [("Compute Engine", "Compute"), ("Cloud Storage", "Storage"), ("Vertex AI", "AI and Machine "
                     "Learning"), ("BigQuery", "Analytics"), ("Networking", "Networking"), ("Cloud SQL", "Databases")],
    "Microsoft": [("Virtual Machines", "Compute"), ("Storage", "Storage"), ("Azure Machine Learning",
                  "AI and Machine Learning"), ("Bandwidth", "Networking"), ("Log Analytics", "Management and "
                  "Governance"), ("Azure SQL Database", "Databases"), ("Azure Kubernetes Service", "Compute")],
}
REGIONS = {"AWS": ["eu-central-1", "us-east-1"], "Google Cloud": ["europe-west4", "us-central1"],
           "Microsoft": ["eastus", "westeurope"]}
PROJECTS = ["axis_failures", "vision_qc", "forecasting", None]


def synthetic_days(rows: int, days: int, seed: int = 7) -> list[list]:
    """``rows`` CostRows spread evenly over ``days`` days (a list per day)."""
    from costs.focus import CostRow

    rng = random.Random(seed)
    tags = [({"mledge-project": p, "mledge-site": f"plant_{s}"} if p else {}) for p in PROJECTS for s in "abc"]
    per_day = [rows // days + (1 if i < rows % days else 0) for i in range(days)]
    out: list[list] = []
    serial = 0
    providers = list(SERVICES)
    for index, count in enumerate(per_day):
        day = FIRST_DAY + timedelta(days=index)
        start = datetime(day.year, day.month, day.day)
        end = start + timedelta(days=1)
        period = datetime(day.year, day.month, 1)
        period_end = (period + timedelta(days=32)).replace(day=1)
        batch = []
        for _ in range(count):
            serial += 1
            provider = providers[serial % 3]
            service, category = SERVICES[provider][rng.randrange(len(SERVICES[provider]))]
            listed = Decimal(rng.randrange(1, 50_000_000_000)).scaleb(-10)
            effective = Decimal(rng.randrange(0, 50_000_000_000)).scaleb(-10)
            batch.append(CostRow(
                billed_cost=listed, effective_cost=effective, list_cost=listed, contracted_cost=listed,
                billing_currency="USD", billing_account_id=f"acct-{serial % 7}",
                billing_period_start=period, billing_period_end=period_end,
                charge_period_start=start, charge_period_end=end,
                charge_category="Usage" if serial % 50 else "Credit",
                charge_description=f"{service} usage", pricing_quantity=Decimal(serial % 97),
                pricing_unit="Hours", provider_name=provider, publisher_name=provider,
                invoice_issuer_name=provider, service_name=service, service_category=category,
                region_id=REGIONS[provider][serial % 2], resource_id=f"res-{serial:09d}",
                sku_id=f"SKU-{serial % 1000:04d}", tags=tags[serial % len(tags)],
            ))
        out.append(batch)
    return out


class MemorySource:
    """Rows already built, served day by day (what a connector hands over)."""

    provider = "bench"

    def __init__(self, name: str, days: list[list]) -> None:
        self.name = name
        self.by_day = {batch[0].charge_period_start.date(): batch for batch in days if batch}

    def rows(self, start: date, end: date):
        return self.by_day.get(start, [])

    def unavailable(self) -> None:
        return None

    def latest_day(self) -> None:
        return None


def _window(days: list[list]) -> tuple[date, date]:
    return FIRST_DAY, FIRST_DAY + timedelta(days=len(days))


def timed_ingest(store, source, start: date, end: date) -> tuple[float, int, float]:
    """Wall seconds, rows, and this process's CPU seconds (on a shared machine wall time includes waiting)."""
    from costs.ingest import ingest

    gc.collect()
    began, cpu = time.perf_counter(), time.process_time()
    result = ingest(source, store, start, end)
    return time.perf_counter() - began, result.rows, time.process_time() - cpu


def naive_orm_insert(url: str, days: list[list], limit: int) -> dict:
    """Row-by-row ORM inserts (add + flush per row, a commit per day) of the first ``limit`` rows, empty table."""
    import json as _json

    from sqlalchemy.orm import Session, registry

    from costs.store import CostStore, cost_rows, row_key

    store = CostStore(url)
    with store.engine.begin() as conn:
        conn.execute(cost_rows.delete())

    class NaiveRow:
        pass

    mapper_registry = registry()
    mapper_registry.map_imperatively(NaiveRow, cost_rows)
    taken = 0
    began = time.perf_counter()
    with Session(store.engine) as session:
        for batch in days:
            for row in batch:
                if taken >= limit:
                    break
                tags = _json.dumps(row.tags, sort_keys=True) if row.tags else None
                orm = NaiveRow()
                orm.x_source, orm.x_row_key = "naive", row_key(row, tags)
                orm.BilledCost, orm.EffectiveCost = row.billed_cost, row.effective_cost
                orm.ListCost, orm.ContractedCost = row.list_cost, row.contracted_cost
                orm.BillingCurrency, orm.BillingAccountId = row.billing_currency, row.billing_account_id
                orm.BillingPeriodStart, orm.BillingPeriodEnd = row.billing_period_start, row.billing_period_end
                orm.ChargePeriodStart, orm.ChargePeriodEnd = row.charge_period_start, row.charge_period_end
                orm.ChargeCategory, orm.ChargeDescription = row.charge_category, row.charge_description
                orm.PricingQuantity, orm.PricingUnit = row.pricing_quantity, row.pricing_unit
                orm.ProviderName, orm.PublisherName = row.provider_name, row.publisher_name
                orm.InvoiceIssuerName, orm.ServiceName = row.invoice_issuer_name, row.service_name
                orm.ServiceCategory, orm.RegionId = row.service_category, row.region_id
                orm.ResourceId, orm.SkuId, orm.Tags = row.resource_id, row.sku_id, tags
                orm.x_project = row.tags.get("mledge-project")
                orm.x_estimated = False
                session.add(orm)
                session.flush()
                taken += 1
            session.commit()
            if taken >= limit:
                break
    seconds = time.perf_counter() - began
    count = store.count("naive")
    store.dispose()
    return {"rows": taken, "seconds": round(seconds, 3), "rows_per_s": round(taken / seconds), "stored": count}


def run_database(label: str, url: str, days: list[list], naive_rows: int) -> dict:
    from costs.store import CostStore

    start, end = _window(days)
    source = MemorySource("bench", days)
    total_rows = sum(len(b) for b in days)
    store = CostStore(url)
    log.info("%s: first ingest of %d rows", label, total_rows)
    first_s, first_rows, first_cpu = timed_ingest(store, source, start, end)
    count_before, totals_before = store.count(), store.totals()
    log.info("%s: first ingest %.1f s (%.0f rows/s); re-ingest", label, first_s, first_rows / first_s)
    again_s, again_rows, again_cpu = timed_ingest(store, source, start, end)
    count_after, totals_after = store.count(), store.totals()
    log.info("%s: re-ingest %.1f s (%.0f rows/s)", label, again_s, again_rows / again_s)
    store.dispose()
    naive = naive_orm_insert(url, days, naive_rows)
    log.info("%s: naive ORM %d rows in %.1f s (%.0f rows/s)", label, naive["rows"], naive["seconds"],
             naive["rows_per_s"])
    first_rate = first_rows / first_s
    return {
        "status": "measured",
        "rows": first_rows,
        "first_ingest_s": round(first_s, 3),
        "first_ingest_rows_per_s": round(first_rate),
        "first_ingest_process_cpu_s": round(first_cpu, 3),
        "reingest_s": round(again_s, 3),
        "reingest_process_cpu_s": round(again_cpu, 3),
        "reingest_rows_per_s": round(again_rows / again_s),
        "count_before_rerun": count_before,
        "count_after_rerun": count_after,
        "totals_before_rerun": {k: str(v) for k, v in totals_before.items()},
        "totals_after_rerun": {k: str(v) for k, v in totals_after.items()},
        "rerun_changes_nothing": count_before == count_after == total_rows and totals_before == totals_after,
        "naive_orm": naive,
        "speedup_vs_naive_first_ingest": round(first_rate / naive["rows_per_s"], 1),
        "speedup_vs_naive_reingest": round((again_rows / again_s) / naive["rows_per_s"], 1),
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
    import sqlalchemy

    env = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
           "sqlalchemy": sqlalchemy.__version__, "load_average": os.getloadavg(),
           "calibration_loop_cpu_s": calibration_cpu_s()}
    try:
        import sqlite3

        env["sqlite"] = sqlite3.sqlite_version
    except ImportError:
        pass
    return env


def markdown(report: dict) -> str:
    lines = [
        "# Cost store ingestion speed",
        "",
        f"{report['rows']:,} FOCUS rows over {report['days']} days; naive baseline: {report['naive_rows']:,} rows "
        "row by row through the SQLAlchemy ORM, measured in the same run. Target: "
        f"{TARGET_ROWS_PER_S:,} rows/s and {TARGET_SPEEDUP:g}x the naive path.",
        "",
        "| database | first ingest rows/s | re-ingest rows/s | naive ORM rows/s | speed-up (first / re-run) "
        "| re-run changes nothing | rows per CPU-second of the ingesting process (first / re-run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in report["databases"].items():
        if result.get("status") != "measured":
            lines.append(f"| {name} | skipped: {result.get('reason')} | | | | |")
            continue
        lines.append(
            f"| {name} | {result['first_ingest_rows_per_s']:,} ({result['first_ingest_s']} s) | "
            f"{result['reingest_rows_per_s']:,} ({result['reingest_s']} s) | {result['naive_orm']['rows_per_s']:,} | "
            f"{result['speedup_vs_naive_first_ingest']}x / {result['speedup_vs_naive_reingest']}x | "
            f"{'yes' if result['rerun_changes_nothing'] else 'NO'} | "
            f"{_per_cpu(result, 'first_ingest')} / {_per_cpu(result, 'reingest')} |")
    env = report["environment"]
    lines += ["", "Targets met: " + ", ".join(f"{k}: {v}" for k, v in report["targets_met"].items()), "",
              f"Machine load: load average {_loads(env.get('load_average_before'))} before and "
              f"{_loads(env.get('load_average'))} after on {env.get('cpus')} CPUs; a fixed Python loop took "
              f"{env.get('calibration_loop_cpu_s')} CPU-s (about 0.15 on an idle modern core). Wall-clock rates "
              "include waiting for a CPU; the CPU-second rates do not (for PostgreSQL they leave out the server).",
              "", f"Environment: {json.dumps(env)}", ""]
    return "\n".join(lines)


def _per_cpu(result: dict, phase: str) -> str:
    cpu = result.get(f"{phase}_process_cpu_s")
    return f"{round(result['rows'] / cpu):,}" if cpu else "n/a"


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
    log.info("building %d rows", args.rows)
    days = synthetic_days(args.rows, args.days)
    databases: dict[str, dict] = {}
    wanted = [d.strip() for d in args.databases.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="mledge-bench-costs-") as scratch:
        if "sqlite" in wanted:
            databases["sqlite"] = run_database("sqlite", f"sqlite:///{scratch}/costs.db", days, args.naive_rows)
        if "postgresql" in wanted:
            server = os.environ.get(PG_ENV, PG_DEFAULT)
            try:
                url, drop = postgres_database(server)
            except Exception as exc:  # unreachable server: say so in the results
                databases["postgresql"] = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"[:300]}
            else:
                try:
                    databases["postgresql"] = run_database("postgresql", url, days, args.naive_rows)
                finally:
                    drop()
    measured = {k: v for k, v in databases.items() if v.get("status") == "measured"}
    report = {
        "benchmark": "cost store ingestion (costs.ingest.ingest, bulk upsert per day)",
        "rows": args.rows,
        "days": args.days,
        "naive_rows": args.naive_rows,
        "databases": databases,
        "targets": {"rows_per_s": TARGET_ROWS_PER_S, "speedup_vs_naive": TARGET_SPEEDUP},
        "targets_met": {
            **{f"{k} >= {TARGET_ROWS_PER_S:,} rows/s": min(v["first_ingest_rows_per_s"], v["reingest_rows_per_s"])
               >= TARGET_ROWS_PER_S for k, v in measured.items()},
            **{f"{k} >= {TARGET_SPEEDUP:g}x naive": v["speedup_vs_naive_first_ingest"] >= TARGET_SPEEDUP
               for k, v in measured.items()},
            **{f"{k} re-run changes nothing": v["rerun_changes_nothing"] for k, v in measured.items()},
        },
        "environment": {**environment(), "load_average_before": load_before,
                        "calibration_loop_cpu_s_before": calibration_before},
        "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0  # a benchmark reports; targets_met says whether the numbers reached the targets


if __name__ == "__main__":
    sys.exit(main())
