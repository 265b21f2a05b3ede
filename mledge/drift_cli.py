"""``mledge drift ...``: data collection, drift evaluation at the sites, and the alerts' review.

Each command returns one JSON-able result (printed by ``mledge.cli``: the Airflow task's XCom); logs go to
stderr. The per-site commands read only that site's store (``settings.site_store(site)``); what leaves it are
p-values, statistics and reports. The DAG ``concept_drift_evaluation`` maps these over the sites:

    create-table -> check-unprocessed -> simulate | (skip) -> p-value -> decide -> (retrain | skip)

Alerts and the processed-batch marks live in the platform database (MLEDGE_PLATFORM_DB_URL, else
``$MLEDGE_HOME/platform.db``); reports go to the MLflow experiment ``drift-<site>-axis_failures``.
Heavy imports (pandas, Evidently, MLflow, torch) happen inside the commands.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from mledge.settings import Settings

log = logging.getLogger("mledge.drift")

DEFAULT_ALPHA = 0.05  # the federation-wide false-alarm rate per round of batches (drift/correction.py)
DEFAULT_SIMULATIONS = 2000


def _site(settings: Settings, site: str) -> str:
    if site not in settings.sites:
        raise ValueError(f"unknown site {site!r}; registered sites: {', '.join(settings.sites)}")
    return site


def _db_url(settings: Settings) -> str:
    from drift.db import platform_db_url

    return platform_db_url(settings.home)


def _alerts(settings: Settings):
    from drift.alerts import AlertStore

    return AlertStore(_db_url(settings))


def _tracker(settings: Settings):
    from drift.tracking import ProcessedBatches

    return ProcessedBatches(_db_url(settings))


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share within [0, 1]")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


# --- collection ------------------------------------------------------------------------------------------------


def cmd_sites(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The registered sites: the list the DAGs map their per-site tasks over."""
    return list(settings.sites)


def cmd_collect(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.sites import drift_schedule, site_profile
    from fl.store import collect_batch

    sites = [_site(settings, args.site)] if args.site else list(settings.sites)
    drift_schedule()  # a broken MLEDGE_DRIFT_SCHEDULE fails here, naming the file, before any site collects
    results = {}
    for site in sites:
        result = collect_batch(settings.site_store(site), site_profile(site), args.rows, args.max_nan_share)
        for item in result["quarantined"]:
            log.warning("site %s: quarantined %s: %s", site, item["file"], item["reason"])
        results[site] = result
    return {
        "sites": results,
        "accepted": sum(len(r["accepted"]) for r in results.values()),
        "quarantined": sum(len(r["quarantined"]) for r in results.values()),
    }


def cmd_accept(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.store import accept_incoming

    site = _site(settings, args.site)
    result = accept_incoming(settings.site_store(site), site, args.max_nan_share)
    for item in result["quarantined"]:
        log.warning("site %s: quarantined %s: %s", site, item["file"], item["reason"])
    return result


# --- evaluation (one step per task) ----------------------------------------------------------------------------


def cmd_create_table(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.alerts import metadata
    from drift.db import safe_url

    store = _alerts(settings)
    _tracker(settings)  # registers drift_processed_batches in the same metadata
    store.create_table()
    return {"database": safe_url(store.url), "tables": sorted(metadata.tables)}


def _champion(site: str):
    from drift.site_eval import find_champion

    champion = find_champion(site)
    if champion is None:
        log.warning("site %s: no production model (champion); concept drift will be skipped", site)
    return champion


def cmd_check_unprocessed(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.site_eval import plan_evaluation

    site = _site(settings, args.site)
    return plan_evaluation(settings.site_store(site), site, _tracker(settings).processed(site), _champion(site))


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.site_eval import simulate

    site = _site(settings, args.site)
    result = simulate(
        settings.site_store(site), site, _tracker(settings).processed(site), _champion(site),
        simulations=args.simulations, bins=args.bins, seed=args.seed,
    )
    log.info("site %s: simulations for %s (reference %s)", site, result["unprocessed"], result["reference"])
    return result


def cmd_p_value(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.site_eval import evaluate

    site = _site(settings, args.site)
    return evaluate(settings.site_store(site), site, alpha=args.alpha)


def cmd_decide(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.site_eval import decide

    site = _site(settings, args.site)
    result = decide(
        settings.site_store(site), site, _alerts(settings), _tracker(settings),
        alpha=args.alpha, n_sites=args.sites_count or len(settings.sites),
    )
    for alert in result["alerts"]:
        if alert["decision"] == "drift":
            log.warning("site %s: %s drift in %s (p=%.3g), alert %d", site, alert["kind"], alert["batch"],
                        alert["p_value"], alert["id"])
    return result


# --- alerts ----------------------------------------------------------------------------------------------------


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> list[dict]:
    if args.site:
        _site(settings, args.site)
    return _alerts(settings).list(site=args.site, status=args.status)


def cmd_review(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.alerts import ACTIONS

    alert = _alerts(settings).set_status(args.alert_id, ACTIONS[args.action], args.user, args.note)
    log.info("alert %d is now %s (by %s)", alert["id"], alert["status"], alert["updated_by"])
    return alert


# --- parser ----------------------------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``drift`` command group to the mledge parser (``add(group, name, func, help)``)."""
    from drift.alerts import ACTIONS, STATUSES  # SQLAlchemy only: cheap

    drift = commands.add_parser("drift", help="data collection, drift evaluation at the sites, alerts")
    group = drift.add_subparsers(dest="sub", required=True)

    add(group, "sites", cmd_sites, "the registered sites, as a JSON list")
    p = add(group, "collect", cmd_collect, "generate each site's next batch and accept or quarantine it")
    p.add_argument("--site", help="only this site (default: every registered site)")
    p.add_argument("--rows", type=_positive, default=None, help="rows per batch (default: the site's profile)")
    p.add_argument("--max-nan-share", type=_share, default=0.0, help="share of rows with missing values allowed")
    p = add(group, "accept", cmd_accept, "validate the files waiting in a site's incoming/ folder")
    p.add_argument("--site", required=True)
    p.add_argument("--max-nan-share", type=_share, default=0.0, help="share of rows with missing values allowed")

    add(group, "create-table", cmd_create_table, "create the drift tables in the platform database")
    p = add(group, "check-unprocessed", cmd_check_unprocessed, "a site's unevaluated batches and reference window")
    p.add_argument("--site", required=True)
    p = add(group, "simulate", cmd_simulate, "the champion's errors and the simulated null, written at the site")
    p.add_argument("--site", required=True)
    p.add_argument("--simulations", type=_positive, default=DEFAULT_SIMULATIONS)
    p.add_argument("--bins", type=_positive, default=10, help="score bins of the stratified permutation")
    p.add_argument("--seed", type=int, default=0)
    p = add(group, "p-value", cmd_p_value, "concept-drift p-values and Evidently's data-drift report, at the site")
    p.add_argument("--site", required=True)
    p.add_argument("--alpha", type=_share, default=DEFAULT_ALPHA, help="Evidently's per-column threshold")
    p = add(group, "decide", cmd_decide, "correct, record alerts, log reports to MLflow, mark batches processed")
    p.add_argument("--site", required=True)
    p.add_argument("--alpha", type=_share, default=DEFAULT_ALPHA, help="false-alarm rate across all sites")
    p.add_argument("--sites-count", type=_positive, default=None, help="sites sharing alpha (default: registered)")

    p = add(group, "alerts", cmd_alerts, "drift alerts, newest first, as JSON")
    p.add_argument("--site")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--json", action="store_true", help="print JSON (the default for this program's commands)")
    p = add(group, "review", cmd_review, "acknowledge, dismiss, approve (retraining) or resolve an alert")
    p.add_argument("--alert-id", type=int, required=True)
    p.add_argument("--action", required=True, choices=sorted(ACTIONS))
    p.add_argument("--user", required=True)
    p.add_argument("--note", default="")
