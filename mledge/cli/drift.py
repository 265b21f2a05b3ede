"""``mledge drift ...``: data collection, drift evaluation at the sites, and the alerts' review.

Each command returns one JSON-able result (printed by ``mledge.cli``: the Airflow task's XCom); logs go to
stderr. The per-site commands read only that site's store (``settings.site_store(site)``); what leaves it are
p-values, statistics and reports. The DAG ``concept_drift_evaluation`` maps these over the sites:

    check-unprocessed -> simulate | (skip) -> p-value -> decide -> (retrain | skip)

Alerts and the processed-batch marks live in the platform database (MLEDGE_PLATFORM_DB_URL, else
``$MLEDGE_HOME/platform.db``); reports go to the MLflow experiment ``drift-<site>-axis_failures``.
Heavy imports (pandas, Evidently, MLflow, torch) happen inside the commands.
"""

from __future__ import annotations

import argparse
import logging

from mledge.cli.common import add, at_site, group, json_object, positive, share
from mledge.contracts import (
    ALERT_ACTIONS,
    ALERT_STATUSES,
    DRIFT_ALPHA,
    DRIFT_BINS,
    DRIFT_SIMULATIONS,
    MAX_DRIFT_SIMULATIONS,
)
from mledge.ops.settings import Settings

log = logging.getLogger("mledge.drift")


def _site(settings: Settings, site: str) -> str:
    if site not in settings.sites:
        raise ValueError(f"unknown site {site!r}; registered sites: {', '.join(settings.sites)}")
    return site


def _alerts(settings: Settings):
    from drift.alerts import AlertStore

    return AlertStore(settings.platform_db_url)


def _tracker(settings: Settings):
    from drift.tracking import ProcessedBatches

    return ProcessedBatches(settings.platform_db_url)


# --- collection ------------------------------------------------------------------------------------------------


def cmd_sites(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The registered sites: the list the DAGs map their per-site tasks over."""
    return list(settings.sites)


def _cap(args: argparse.Namespace) -> dict:
    return {"max_file_bytes": args.max_file_bytes} if args.max_file_bytes else {}


@at_site
def cmd_collect(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.onsite.profiles import drift_schedule, site_profile
    from mledge.onsite.store import collect_batch

    sites = [_site(settings, args.site)] if args.site else list(settings.sites)
    drift_schedule()  # a broken MLEDGE_DRIFT_SCHEDULE fails here, naming the file, before any site collects
    results = {}
    for site in sites:
        result = collect_batch(
            settings.site_store(site), site_profile(site), args.rows, args.max_nan_share,
            run_id=args.run_id, **_cap(args),
        )
        for item in result["quarantined"]:
            log.warning("site %s: quarantined %s: %s", site, item["file"], item["reason"])
        results[site] = result
    return {
        "sites": results,
        "accepted": sum(len(r["accepted"]) for r in results.values()),
        "quarantined": sum(len(r["quarantined"]) for r in results.values()),
    }


@at_site
def cmd_accept(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.onsite.store import accept_incoming

    site = _site(settings, args.site)
    result = accept_incoming(settings.site_store(site), site, args.max_nan_share, **_cap(args))
    for item in result["quarantined"]:
        log.warning("site %s: quarantined %s: %s", site, item["file"], item["reason"])
    return result


# --- evaluation (one step per task) ----------------------------------------------------------------------------


def _champion(site: str):
    from mledge.onsite.drift_evaluation import find_champion

    champion = find_champion(site)
    if champion is None:
        log.warning("site %s: no production model (champion); concept drift will be skipped", site)
    return champion


def _calibration(tracker, site: str, champion) -> list[str]:
    """The batches this champion already evaluated at the site without concept drift (names, from the platform)."""
    from drift.history import calibration_batches

    return calibration_batches(tracker.engine, site, champion.as_dict() if champion else None)


def _platform_state(settings: Settings, site: str) -> dict:
    """What a site's evaluation needs from the platform: the batches already decided, the champion, and the
    batches that champion already evaluated without concept drift (its calibration)."""
    tracker, champion = _tracker(settings), _champion(site)
    return {
        "site": site,
        "processed": sorted(tracker.processed(site)),
        "champion": champion.as_dict() if champion else None,
        "calibration": _calibration(tracker, site, champion),
    }


def _state(args: argparse.Namespace, settings: Settings, site: str) -> tuple[set[str], object, list[str]]:
    """The platform's state for a site step: given with --state (the DAG passes `drift state`'s answer: a site
    cannot read the platform database), else read directly (one machine)."""
    from mledge.onsite.drift_evaluation import Champion

    state = args.state if args.state is not None else _platform_state(settings, site)
    if state.get("site", site) != site:
        raise ValueError(f"--state is for site {state.get('site')!r}, not {site!r}")
    try:
        champion = Champion(**state["champion"]) if state["champion"] else None
        return set(state["processed"]), champion, list(state["calibration"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"--state for {site} lacks or mistypes {exc}: expected `mledge drift state`'s answer") from exc


def cmd_state(args: argparse.Namespace, settings: Settings) -> dict:
    """At the platform: what the site's evaluation steps need to know (``--state`` of the site commands)."""
    return _platform_state(settings, _site(settings, args.site))


@at_site
def cmd_check_unprocessed(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.onsite.drift_evaluation import plan_evaluation

    site = _site(settings, args.site)
    processed, champion, calibration = _state(args, settings, site)
    return plan_evaluation(settings.site_store(site), site, processed, champion, calibration=calibration)


@at_site
def cmd_simulate(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.onsite.drift_evaluation import simulate

    site = _site(settings, args.site)
    processed, champion, calibration = _state(args, settings, site)
    result = simulate(
        settings.site_store(site), site, processed, champion, calibration=calibration,
        simulations=args.simulations, bins=args.bins, seed=args.seed,
    )
    log.info("site %s: units %s (reference %s, calibration %s)", site,
             [(u["name"], u["status"]) for u in result["units"]], result["reference"], result["calibration"])
    return result


@at_site
def cmd_p_value(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.onsite.drift_evaluation import evaluate

    site = _site(settings, args.site)
    return evaluate(settings.site_store(site), site, alpha=args.alpha)


def cmd_decide(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.decision import decide
    from mledge.onsite import drift_evaluation

    site = _site(settings, args.site)
    tracker = _tracker(settings)
    if args.measurements is not None:  # the DAG: the site's `drift measurements`, the platform never reads the store
        if args.measurements.get("site") != site:
            raise ValueError(f"--measurements are of site {args.measurements.get('site')!r}, not {site!r}")
        plan, results = args.measurements.get("plan"), args.measurements.get("results") or {}
        publish = Deferred()
    else:  # one machine: read the workspace, publish and archive here
        store = settings.site_store(site)
        plan, results = drift_evaluation.measured(store, site, tracker.processed(site))
        publish = drift_evaluation.publish_reports(store)
    result = decide(
        site, plan, results, _alerts(settings), tracker,
        alpha=args.alpha, n_sites=args.sites_count or len(settings.sites), publish=publish,
    )
    if isinstance(publish, Deferred):
        result["publish"] = publish.calls  # the site's `drift publish` logs them, then archives its workspace
    else:
        drift_evaluation.archive(store)
    for alert in result["alerts"]:
        if alert["decision"] == "drift":
            log.warning("site %s: %s drift in %s (p=%.3g), alert %d", site, alert["kind"], alert["batch"],
                        alert["p_value"], alert["id"])
        elif alert["decision"] == "anomaly":
            log.warning("site %s: %s anomaly in %s (%s), alert %d", site, alert["kind"], alert["batch"],
                        alert["details"].get("reason"), alert["id"])
    for waiting in result["waiting"]:
        log.info("site %s: %s waits to be pooled with the next batch: %s", site, waiting["unit"], waiting["reason"])
    return result


class Deferred:
    """A publisher for drift.decision.decide at the platform: it keeps what to publish, for the site to log (the
    reports are files at the site), and links each alert to the site-local report meanwhile."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **unit: object) -> dict:
        from mledge.onsite.drift_evaluation import archived

        self.calls.append(unit)
        reports, ident = unit.get("reports") or {}, str(unit.get("evaluation_id"))
        # The site archives its workspace once it has published: the alert names where the report will lie.
        return {"report_uri": archived(reports.get("html"), ident),
                "report_json_uri": archived(reports.get("json"), ident)}


@at_site
def cmd_measurements(args: argparse.Namespace, settings: Settings) -> dict:
    """At the site: the plan and each unit's measurement (statistics and p-values, no row) for `drift decide`."""
    from mledge.onsite import drift_evaluation

    site = _site(settings, args.site)
    processed, _, _ = _state(args, settings, site)
    plan, results = drift_evaluation.measured(settings.site_store(site), site, processed)
    return {"site": site, "plan": plan, "results": results}


@at_site
def cmd_publish(args: argparse.Namespace, settings: Settings) -> dict:
    """At the site: log each decided unit's metrics and decision to the site's drift experiment in MLflow (the
    Evidently reports stay at the site), then archive the evaluation's workspace."""
    from mledge.onsite import drift_evaluation

    site = _site(settings, args.site)
    decided = args.decision
    if decided.get("site") != site:
        raise ValueError(f"--decision is of site {decided.get('site')!r}, not {site!r}")
    store = settings.site_store(site)
    publish = drift_evaluation.publish_reports(store)
    links = {unit["batch"]: publish(**unit) for unit in decided.get("publish") or []}
    archived = drift_evaluation.archive(store)
    return {"site": site, "published": links, "archived": str(archived) if archived else None}


# --- alerts ----------------------------------------------------------------------------------------------------


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> list[dict]:
    if args.site:
        _site(settings, args.site)
    return _alerts(settings).list(site=args.site, status=args.status)


def cmd_review(args: argparse.Namespace, settings: Settings) -> dict:
    alert = _alerts(settings).set_status(args.alert_id, ALERT_ACTIONS[args.action], args.user, args.note)
    log.info("alert %d is now %s (by %s)", alert["id"], alert["status"], alert["updated_by"])
    return alert


# --- parser ----------------------------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``drift`` command group to the mledge parser."""
    group_ = group(commands, "drift", "data collection, drift evaluation at the sites, alerts")

    add(group_, "sites", cmd_sites, "the registered sites, as a JSON list")
    p = add(group_, "collect", cmd_collect, "generate each site's next batch and accept or quarantine it")
    p.add_argument("--site", help="only this site (default: every registered site)")
    p.add_argument("--rows", type=positive, default=None, help="rows per batch (default: the site's profile)")
    p.add_argument("--max-nan-share", type=share, default=0.0, help="share of rows with missing values allowed")
    p.add_argument("--run-id", default=None,
                   help="idempotency key (the Airflow run id): a retried run finds the batch it made and adds none")
    p.add_argument("--max-file-bytes", type=positive, default=None,
                   help="largest incoming file read (default 100 MiB); larger ones are quarantined unparsed")
    p = add(group_, "accept", cmd_accept, "validate the files waiting in a site's incoming/ folder")
    p.add_argument("--site", required=True)
    p.add_argument("--max-nan-share", type=share, default=0.0, help="share of rows with missing values allowed")
    p.add_argument("--max-file-bytes", type=positive, default=None,
                   help="largest incoming file read (default 100 MiB); larger ones are quarantined unparsed")

    state_help = "`mledge drift state`'s answer for the site (default: read the platform database directly)"
    p = add(group_, "state", cmd_state, "at the platform: decided batches, champion and calibration of a site")
    p.add_argument("--site", required=True)
    p = add(group_, "check-unprocessed", cmd_check_unprocessed, "a site's unevaluated batches and reference window")
    p.add_argument("--site", required=True)
    p.add_argument("--state", type=json_object, default=None, metavar="JSON", help=state_help)
    p = add(group_, "simulate", cmd_simulate, "units of the unevaluated batches and the concept test's simulations")
    p.add_argument("--site", required=True)
    p.add_argument("--simulations", type=positive, default=DRIFT_SIMULATIONS,
                   help=f"permutations per batch (at most {MAX_DRIFT_SIMULATIONS})")
    p.add_argument("--bins", type=positive, default=DRIFT_BINS, help="score bins per side of the decision threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", type=json_object, default=None, metavar="JSON", help=state_help)
    p = add(group_, "p-value", cmd_p_value, "concept and data-drift p-values and Evidently's report, at the site")
    p.add_argument("--site", required=True)
    p.add_argument("--alpha", type=share, default=DRIFT_ALPHA, help="the report's per-column threshold (uncorrected)")
    p = add(group_, "measurements", cmd_measurements, "at the site: the evaluation's statistics, for `drift decide`")
    p.add_argument("--site", required=True)
    p.add_argument("--state", type=json_object, default=None, metavar="JSON", help=state_help)
    p = add(group_, "decide", cmd_decide,
            "correct per family, record alerts, log reports and the timeline to MLflow, mark decided batches processed")
    p.add_argument("--site", required=True)
    p.add_argument("--alpha", type=share, default=DRIFT_ALPHA, help="false-alarm rate across all sites")
    p.add_argument("--sites-count", type=positive, default=None, help="sites sharing alpha (default: registered)")
    p.add_argument("--measurements", type=json_object, default=None, metavar="JSON",
                   help="the site's `drift measurements` (default: read the site's workspace, on one machine)")
    p = add(group_, "publish", cmd_publish, "at the site: log the decided units to MLflow, archive the workspace")
    p.add_argument("--site", required=True)
    p.add_argument("--decision", type=json_object, required=True, metavar="JSON", help="`drift decide`'s answer")

    p = add(group_, "alerts", cmd_alerts, "drift alerts, newest first, as JSON")
    p.add_argument("--site")
    p.add_argument("--status", choices=ALERT_STATUSES)
    p.add_argument("--json", action="store_true", help="print JSON (also the default when stdout is not a terminal)")
    p = add(group_, "review", cmd_review, "acknowledge, dismiss, approve (retraining) or resolve an alert")
    p.add_argument("--alert-id", type=int, required=True)
    p.add_argument("--action", required=True, choices=sorted(ALERT_ACTIONS))
    p.add_argument("--user", required=True)
    p.add_argument("--note", default="")
