"""``mledge costs ...``: the cost layer's commands (ingestion, report, recommendation, catalogue, training cost).

Each command returns one JSON-able result (printed by ``mledge.cli``); logs go to stderr. Amounts are decimal
strings. Dates are UTC days; ``--to`` is exclusive everywhere, like FOCUS's ChargePeriodEnd. A source without
credentials gives ``{"source": ..., "skipped": "<reason>"}`` and exit 0, so a scheduled task can skip it.

The store is ``MLEDGE_COST_DB_URL`` or ``sqlite:///$MLEDGE_HOME/costs.db``; the sources file
``MLEDGE_COST_SOURCES`` or ``costs/data/sources.toml``. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import logging
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


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import build_source, load_config
    from costs.ingest import ingest

    config = load_config()
    source = build_source(config.source(args.source), config.project_tag_key)
    reason = source.unavailable()
    if reason:
        log.warning("Skipping cost source %s: %s", args.source, reason)
        return {"source": args.source, "skipped": reason}
    start, end = ingest_window(args, source, config.trailing_days)
    log.info("Ingesting %s from %s to %s (exclusive)", args.source, start, end)
    return ingest(source, _store(settings), start, end, tag_key=config.project_tag_key).as_dict()


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


def cmd_record_training(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import load_config
    from costs.training import parse_seconds, record_training

    at = datetime.fromisoformat(args.at) if args.at else None
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return record_training(_store(settings), args.flower_run_id, parse_seconds(args.seconds_json),
                           project=args.project, tag_key=load_config().project_tag_key, at=at)


def cmd_demo_summary(args: argparse.Namespace, settings: Settings) -> dict:
    from costs.config import load_config
    from costs.demo import demo_summary

    return demo_summary(_store(settings), load_config(), project=args.project, days=args.days, site=args.site)


# --- parser ----------------------------------------------------------------------------------------------------


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
    p.add_argument("--json", action="store_true", help="print JSON (the default for this program's commands)")

    p = add(costs, "recommend", cmd_recommend, "cheapest matching instance per provider for a template")
    p.add_argument("--vcpus", type=int, required=True)
    p.add_argument("--memory-gib", type=float, required=True)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--gpu-class", default=None, help="T4, L4, A10G, ... (never mixed)")
    p.add_argument("--regions", default="", help="comma-separated, e.g. eu-central-1,europe-west4")
    p.add_argument("--hours", type=_decimal, default=None, help="add total_usd for this many hours")
    p.add_argument("--json", action="store_true", help="print JSON (the default for this program's commands)")

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

    p = add(costs, "demo-summary", cmd_demo_summary,
            "ingest the last days of the sample exports; project cost by provider and a recommendation")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--site", default="plant_a", help="whose declared machine is the recommendation's template")
