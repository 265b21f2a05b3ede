"""``mledge costs ...``: the cost layer's commands (ingestion, report, recommendation, catalogue, training cost).

Each command returns one JSON-able result (printed by ``mledge.cli``); logs go to stderr. Amounts are decimal
strings. Dates are UTC days; ``--to`` is exclusive everywhere, like FOCUS's ChargePeriodEnd. A source without
credentials gives ``{"source": ..., "skipped": "<reason>"}`` and exit 0, so a scheduled task can skip it.

The store is ``MLEDGE_COST_DB_URL`` or ``sqlite:///$MLEDGE_HOME/costs.db``; the sources file
``MLEDGE_COST_SOURCES`` or ``costs/data/sources.toml``. Heavy imports happen inside the commands.

``ingest`` prints its JSON summary on failure too (days written, kept and failed, each distinct problem once with
the days it affected) before the error line, and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from mledge.cli.common import add
from mledge.contracts import USE_CASE
from mledge.ops.settings import Settings

log = logging.getLogger("mledge.costs")

DEFAULT_PROJECT = USE_CASE


def _store(settings: Settings):
    from costs.store import CostStore, default_url

    return CostStore(default_url(settings.platform_home))


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-20") from None


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _today() -> date:
    return datetime.now(UTC).date()


# --- commands --------------------------------------------------------------------------------------------------


def cmd_sources(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import build_source, load_config

    config = load_config()
    sources = []
    for source_config in config.sources:
        entry = source_config.as_dict()
        if args.check:
            entry["unavailable"] = build_source(source_config, config.project_tag_key).unavailable()
        sources.append(entry)
    return {"config": str(config.path), "project_tag_key": config.project_tag_key,
            "trailing_days": config.trailing_days, "sources": sources}


def ingest_window(args: argparse.Namespace, source, trailing_days: int) -> tuple[date, date]:
    """--from/--to as given; else the trailing days ending today, or ending at a file source's newest day."""
    if args.from_ or args.to:
        if not (args.from_ and args.to):
            raise ValueError("--from and --to go together (or use --trailing-days)")
        return args.from_, args.to
    from costs.ingest import trailing_window

    days = args.trailing_days or trailing_days
    newest = source.latest_day()  # exports arrive late: their last day, not today, ends the window
    anchor = newest + timedelta(days=1) if newest else _today()
    return trailing_window(days, anchor)


def _print_json(document: dict) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import build_source, load_config
    from costs.ingest import IngestError, ingest

    config = load_config()
    source_config = config.source(args.source)
    source = build_source(source_config, config.project_tag_key)
    reason = source.unavailable()
    if reason:
        log.warning("Skipping cost source %s: %s", args.source, reason)
        return {"source": args.source, "skipped": reason}
    start, end = ingest_window(args, source, config.trailing_days)
    log.info("Ingesting %s from %s to %s (exclusive)", args.source, start, end)
    try:
        return ingest(source, _store(settings), start, end, tag_rule=config.tag_rule(source_config)).as_dict()
    except IngestError as exc:  # the summary goes to stdout (the task's XCom) before the error line
        _print_json(exc.summary())
        raise
    except Exception as exc:
        _print_json({"source": args.source, "from": start.isoformat(), "to": end.isoformat(), "status": "failed",
                     "error": f"{type(exc).__name__}: {exc}"})
        raise


def cmd_report(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.report import chart_svg, cost_report

    end = args.to or _today() + timedelta(days=1)
    start = args.from_ or end - timedelta(days=30)
    report = cost_report(_store(settings), args.project, start, end, metric=args.metric, currency=args.currency)
    if args.chart_svg:
        report["chart_svg"] = chart_svg(report)
    return report


def cmd_recommend(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.catalog import load_offers
    from costs.recommend import Template, recommend

    regions = tuple(r.strip() for r in (args.regions or "").split(",") if r.strip())
    template = Template(vcpus=args.vcpus, memory_gib=args.memory_gib, gpus=args.gpus, gpu_class=args.gpu_class,
                        regions=regions, hours=args.hours)
    return recommend(load_offers(_store(settings)), template)


def cmd_catalog_seed(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.catalog import SNAPSHOT, seed

    return seed(_store(settings), args.snapshot or SNAPSHOT)


def cmd_catalog_refresh(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.pricing import refresh

    result = refresh(_store(settings), args.provider)
    if "skipped" in result:
        log.warning("Skipping the %s price refresh: %s", args.provider, result["skipped"])
    return result


def _evidence(flower_run_id: str, path: str | None) -> tuple[dict | None, int | None, str | None]:
    """(promotion evidence, rounds, why not): from ``path`` ('-': stdin), else the run's MLflow record."""
    if path:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--evidence {path}: not JSON: {exc}") from None
        return document, None, None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None, None, "no promotion evidence: MLFLOW_TRACKING_URI is not set and no --evidence was given"
    try:
        import mlflow

        from mledge.registry.promotion import find_run, read_evidence

        run = find_run(mlflow.MlflowClient(), flower_run_id)
        rounds = run.data.params.get("num-server-rounds")
        return read_evidence(run).to_dict(), int(rounds) if rounds else None, None
    except Exception as exc:  # MLflow down or no record: the shares wait for `mledge costs share`
        return None, None, f"no promotion evidence: {type(exc).__name__}: {exc}"


def _share(store, flower_run_id: str, project: str, day: date, *, evidence_path: str | None, rule: str,
           beta: float, metric: str, rounds: int | None, sites: set[str]) -> dict:
    from costs.sharing import compute_shares, record_shares, site_inputs

    evidence, found_rounds, why_not = _evidence(flower_run_id, evidence_path)
    if evidence is None:
        log.warning("Run %s: shares not recorded: %s (run `mledge costs share` later)", flower_run_id, why_not)
        return {"pending": why_not}
    inputs = site_inputs(evidence, sites=sites, metric=metric, rounds=rounds or found_rounds)
    result = compute_shares(flower_run_id, inputs, rule=rule, beta=beta, metric=metric)
    return record_shares(store, result, project=project, day=day)


def cmd_record_training(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import load_config
    from costs.training import parse_seconds, record_training

    at = datetime.fromisoformat(args.at) if args.at else None
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    store = _store(settings)
    seconds = parse_seconds(args.seconds_json)
    result = record_training(store, args.flower_run_id, seconds, project=args.project,
                             tag_key=load_config().project_tag_key, at=at)
    result["shares"] = _share(store, args.flower_run_id, args.project, date.fromisoformat(result["day"]),
                              evidence_path=args.evidence, rule=args.share_rule, beta=args.beta, metric=args.metric,
                              rounds=args.rounds, sites=set(seconds))
    return result


def cmd_share(args: argparse.Namespace, settings: Settings) -> dict:
    """(Re)compute one run's cost shares from its promotion evidence."""
    from sqlalchemy import func, select

    from costs.store import cost_rows
    from costs.training import RESOURCE_PREFIX, TRAINING_SOURCE

    store = _store(settings)
    prefix = f"{RESOURCE_PREFIX}{args.flower_run_id}/site/"
    with store.engine.connect() as conn:
        rows = conn.execute(select(cost_rows.c.x_site, func.min(cost_rows.c.ChargePeriodStart))
                            .where(cost_rows.c.x_source == TRAINING_SOURCE,
                                   cost_rows.c.ResourceId.startswith(prefix, autoescape=True))
                            .group_by(cost_rows.c.x_site)).all()
    day = args.day or (min(r[1] for r in rows).date() if rows else None)
    if day is None:
        raise ValueError(f"run {args.flower_run_id}: no training cost recorded (run `mledge costs record-training` "
                         "first, or give --day)")
    shares = _share(store, args.flower_run_id, args.project, day, evidence_path=args.evidence, rule=args.rule,
                    beta=args.beta, metric=args.metric, rounds=args.rounds, sites={r[0] for r in rows if r[0]})
    if "pending" in shares:
        raise LookupError(f"run {args.flower_run_id}: {shares['pending']}")
    return shares


def cmd_demo_summary(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import load_config
    from costs.demo import demo_summary

    return demo_summary(_store(settings), load_config(), project=args.project, days=args.days, site=args.site)


# --- parser ----------------------------------------------------------------------------------------------------


def _share_options(p: argparse.ArgumentParser, rule_flag: str) -> None:
    from costs.sharing import DEFAULT_BETA, DEFAULT_RULE, RULES

    p.add_argument(rule_flag, dest="share_rule" if rule_flag == "--share-rule" else "rule", default=DEFAULT_RULE,
                   choices=RULES, help="how the run's cost is split among its sites (costs/sharing.py)")
    p.add_argument("--evidence", default=None,
                   help="promotion evidence JSON file ('-': stdin); default: the run's MLflow record")
    p.add_argument("--beta", type=float, default=DEFAULT_BETA, help="diminishing returns of data, in (0, 1]")
    p.add_argument("--metric", default="f1", choices=["f1", "recall", "precision", "accuracy", "loss"],
                   help="held-out metric whose per-site value weighs the site's data")
    p.add_argument("--rounds", type=int, default=None, help="the run's rounds (default: from MLflow or failures)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``costs`` command group to the ``mledge`` parser."""
    group = commands.add_parser("costs", help="cloud costs: ingestion, reports, price recommendations")
    costs = group.add_subparsers(dest="costs_command", required=True)

    p = add(costs, "sources", cmd_sources, "list the configured cost sources")
    p.add_argument("--check", action="store_true", help="also say which ones cannot run here and why")

    p = add(costs, "ingest", cmd_ingest, "ingest one source day by day into the cost store (idempotent)")
    p.add_argument("--source", required=True, help="a name from `mledge costs sources`")
    p.add_argument("--from", dest="from_", type=_day, help="first day (UTC)")
    p.add_argument("--to", type=_day, help="day after the last one (exclusive)")
    p.add_argument("--trailing-days", type=int, default=None,
                   help="re-ingest the last N days (default: sources.toml trailing_days); file sources end at "
                        "their newest day")

    p = add(costs, "report", cmd_report, "a project's cost by provider, service and day (JSON)")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--from", dest="from_", type=_day, help="first day (default: 30 days before --to)")
    p.add_argument("--to", type=_day, help="day after the last one, exclusive (default: tomorrow)")
    p.add_argument("--metric", default="EffectiveCost",
                   choices=["EffectiveCost", "BilledCost", "ListCost", "ContractedCost"])
    p.add_argument("--currency", default=None, help="needed only when the project is billed in several")
    p.add_argument("--chart-svg", action="store_true", help="add chart_svg: daily cost per provider as SVG")
    p.add_argument("--json", action="store_true", help="print JSON (also the default when stdout is not a terminal)")

    p = add(costs, "recommend", cmd_recommend, "cheapest matching instance per provider for a template")
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--memory-gib", type=float, required=True)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--gpu-class", default=None, help="T4, L4, A10G, ... (never mixed)")
    p.add_argument("--regions", default="", help="comma-separated, e.g. eu-central-1,europe-west4")
    p.add_argument("--hours", type=_decimal, default=None, help="add total_usd for this many hours")
    p.add_argument("--json", action="store_true", help="print JSON (also the default when stdout is not a terminal)")

    catalog = costs.add_parser("catalog", help="the price catalogue").add_subparsers(dest="catalog_command",
                                                                                     required=True)
    p = add(catalog, "seed", cmd_catalog_seed, "load the shipped price snapshot (dated prices are kept)")
    p.add_argument("--snapshot", default=None, help="another snapshot CSV with the same columns")
    p = add(catalog, "refresh", cmd_catalog_refresh, "refresh one provider's prices from its price API")
    p.add_argument("--provider", required=True, choices=["aws", "azure", "gcp"])

    p = add(costs, "record-training", cmd_record_training,
            "record a Flower run's compute seconds per site as cost rows, priced at each site's instance type")
    p.add_argument("--flower-run-id", required=True)
    p.add_argument("--seconds-json", required=True, help='e.g. \'{"plant_a": 120.5, "plant_b": 98}\'')
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--at", default=None, help="when the run ended (ISO 8601, default now); dates the rows")
    _share_options(p, "--share-rule")

    p = add(costs, "share", cmd_share, "(re)compute a Flower run's cost shares per site from its promotion evidence")
    p.add_argument("--flower-run-id", required=True)
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--day", type=_day, default=None, help="the run's day (default: its training rows' day)")
    _share_options(p, "--rule")

    p = add(costs, "demo-summary", cmd_demo_summary,
            "ingest the last days of the sample exports; project cost by provider and a recommendation")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--site", default="plant_a", help="whose declared machine is the recommendation's template")
