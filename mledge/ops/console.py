"""The operator console's view of the federation: one document for the Federation page and ``mledge console``.

It assembles what other commands already know, so that the page needs one call:

- ``mledge status`` (``mledge.ops.status.collect``): each site's SuperNode (connected, refused) and edge worker
  (connected, state, last heartbeat), the Flower runs, the registered models with versions and aliases;
- the platform database's drift alerts: each site's open confirmed drift (``new``, ``acknowledged``,
  ``retraining``) and its last evaluated batch;
- the SuperNode registry and the SuperLink: which sites have a registered key, and whether the node of that key
  is online now (what the platform itself can see; ``mledge status`` also reads the SuperNodes' pid files and logs,
  which the api-server's platform user may not read when the stack runs each party as its own Unix user);
- MLflow: the last training runs of the federation experiment and, per round, the global and per-site F1 of the
  failure class from each run's metric history (``eval_f1``, ``<site>/eval_f1``).

A part that cannot be read (MLflow down, say) is reported under ``errors``, never raised: the page shows the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mledge.contracts import (
    ALERT_STATUSES,
    CHAMPION,
    EXPERIMENT,
    FLWR_CONNECTION,
    GLOBAL_MODEL,
    MIN_CLIENTS,
    SUPERNODE_REGISTRY,
    TAG_DAG_RUN,
    TAG_FAILED_SITES,
    TAG_FLOWER_RUN,
    TAG_STRATEGY,
    TRAINING_DAG_ID,
    site_model_name,
)
from mledge.ops.settings import Settings

log = logging.getLogger("mledge.console")

# Confirmed drift that nobody has dismissed and no training has resolved yet.
OPEN_STATUSES = tuple(s for s in ALERT_STATUSES if s not in ("dismissed", "resolved"))
F1 = "eval_f1"
RUNS = 5


def site_metric(site: str, metric: str = F1) -> str:
    """The per-site key of a round metric, as the ServerApp logs it (``fl.serverapp.log_evaluation``)."""
    return f"{site}/{metric}"


# --- drift -----------------------------------------------------------------------------------------------------


def drift_by_site(alerts: Iterable[Mapping[str, Any]], sites: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per site: its open confirmed drift alerts (newest first) and the last batch it evaluated."""
    found: dict[str, dict[str, Any]] = {s: {"open_alerts": [], "last_evaluated_batch": None} for s in sites}
    for alert in alerts:  # newest first, as the store lists them
        entry = found.setdefault(str(alert["site"]), {"open_alerts": [], "last_evaluated_batch": None})
        if entry["last_evaluated_batch"] is None or str(alert["batch"]) > entry["last_evaluated_batch"]:
            entry["last_evaluated_batch"] = str(alert["batch"])
        if alert.get("decision") == "drift" and alert.get("status") in OPEN_STATUSES:
            entry["open_alerts"].append(
                {k: alert.get(k) for k in ("id", "batch", "kind", "p_value", "status", "created_at")}
            )
    return found


def training_need(site: Mapping[str, Any], open_alerts: list[dict], champion: str | None) -> list[str]:
    """Why a site requires training (empty: it does not): open confirmed drift, or no champion model yet."""
    reasons = []
    waiting = [a for a in open_alerts if a["status"] != "retraining"]
    if waiting:
        batches = ", ".join(sorted({str(a["batch"]) for a in waiting}))
        reasons.append(f"{len(waiting)} open drift alert(s) ({batches})")
    if any(a["status"] == "retraining" for a in open_alerts):
        reasons.append("retraining requested")
    if champion is None:
        reasons.append(f"no {CHAMPION} model")
    return reasons


# --- MLflow training runs ------------------------------------------------------------------------------------


def _history(client: Any, run_id: str, key: str) -> list[dict[str, Any]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    by_step = {m.step: m.value for m in points}  # a retried round keeps its last value
    return [{"round": step, "value": value} for step, value in sorted(by_step.items())]


def _sites_of(metrics: Mapping[str, float], known: Iterable[str]) -> list[str]:
    """Sites with a per-round F1 in the run: the registered ones first, then any other the run names."""
    named = {k.split("/")[0] for k in metrics if k.count("/") == 1 and k.endswith("/" + F1)}
    return [s for s in known if s in named] + sorted(named - set(known))


def training_runs(sites: Iterable[str], limit: int = RUNS, experiment: str = EXPERIMENT) -> list[dict[str, Any]]:
    """The last ``limit`` training runs (newest first), each with its per-round F1, global and per site."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit
    )
    sites = list(sites)
    result = []
    for run in runs:
        tags, info = run.data.tags, run.info
        failed = [s for s in (tags.get(TAG_FAILED_SITES) or "").split(",") if s]
        result.append(
            {
                "run_id": info.run_id,
                "run_name": info.run_name,
                "experiment_id": info.experiment_id,
                "status": info.status,
                "start_time": info.start_time,
                "end_time": info.end_time,
                "flower_run_id": tags.get(TAG_FLOWER_RUN),
                "dag_id": TRAINING_DAG_ID,
                "dag_run_id": tags.get(TAG_DAG_RUN) or None,
                "strategy": tags.get(TAG_STRATEGY),
                "failed_sites": failed,
                "final": {k: v for k, v in run.data.metrics.items() if k == F1 or k.endswith("/" + F1)},
                "rounds": {
                    "global": _history(client, info.run_id, F1),
                    "sites": {
                        s: _history(client, info.run_id, site_metric(s)) for s in _sites_of(run.data.metrics, sites)
                    },
                },
            }
        )
    return result


# --- the document ----------------------------------------------------------------------------------------------


def _models(registered: list[dict], sites: Iterable[str]) -> dict[str, Any]:
    by_name = {m["name"]: m for m in registered}

    def entry(name: str) -> dict[str, Any]:
        model = by_name.get(name)
        return {"name": name, "registered": model is not None, "aliases": (model or {}).get("aliases", {}),
                "versions": (model or {}).get("versions", [])}

    return {"global": entry(GLOBAL_MODEL), "sites": {s: entry(site_model_name(s)) for s in sites}}


def _last_batch(settings: Settings, site: str) -> str | None:
    """The newest accepted batch in the site's store (None when it has none, or the store is not readable here)."""
    from mledge.onsite.store import batch_paths

    paths = batch_paths(settings.site_store(site))
    return paths[-1].stem if paths else None


def online_sites(settings: Settings, registered: Mapping[str, str]) -> set[str]:
    """Sites whose registered SuperNode key is online at the SuperLink now (``flwr supernode ls``)."""
    from fl.runs import online_nodes

    online = {str(n["node-id"]) for n in online_nodes(FLWR_CONNECTION, settings.flwr_bin)}
    return {site for node, site in registered.items() if str(node) in online}


def _read(what: str, errors: dict[str, str], read: Any, default: Any) -> Any:
    try:
        return read()
    except Exception as exc:  # one part down is a fact to show, not a failure of the page
        log.warning("%s: %s: %s", what, exc.__class__.__name__, exc)
        errors[what] = f"{exc.__class__.__name__}: {exc}"
        return default


def federation(settings: Settings, runs: int = RUNS) -> dict[str, Any]:
    """Sites, training readiness, last runs with per-round F1, models: the Federation page's one document."""
    from drift.alerts import AlertStore
    from mledge.ops.status import collect
    from mledge.security.node_keys import registry_sites

    errors: dict[str, str] = {}
    status = collect(settings)
    for key, part in (("superlink", status["superlink"].get("error")), ("edge_workers", status["edge_workers_error"]),
                      ("registry", status["registry_error"])):
        if part:
            errors[key] = part
    alerts = _read("drift_alerts", errors, lambda: AlertStore(settings.platform_db_url).list(), [])
    registry = _read("supernode_registry", errors,
                     lambda: registry_sites(settings.platform_home / SUPERNODE_REGISTRY), {})
    registered_keys = set(registry.values())
    online = _read("superlink", errors, lambda: online_sites(settings, registry), set()) if registry else set()
    drift = drift_by_site(alerts, settings.sites)
    models = _models(status["registered_models"], settings.sites)
    flower = {str(r["run_id"]): r for r in status["flower_runs"]}
    last_runs = _read("training_runs", errors, lambda: training_runs(settings.sites, runs), [])
    for run in last_runs:
        run["flower_status"] = (flower.get(str(run["flower_run_id"])) or {}).get("status")

    sites = []
    for site in status["sites"]:
        name = site["site"]
        worker = site["edge_worker"]
        batches = site.get("batches") or 0
        last_evaluated = drift.get(name, {}).get("last_evaluated_batch")
        # The store when this process may read it (an operator's terminal), else what the platform evaluated.
        last_batch = _read(f"store_{name}", errors, lambda name=name: _last_batch(settings, name), None)
        open_alerts = drift.get(name, {}).get("open_alerts", [])
        reasons = training_need(site, open_alerts, models["sites"][name]["aliases"].get(CHAMPION))
        sites.append(
            {
                "site": name,
                "registered": name in registered_keys,
                "supernode": {
                    "connected": bool(site["connected"]) or name in online,
                    "refused": site.get("refused"),
                    "node_id": site.get("node_id"),
                },
                "edge_worker": {k: worker.get(k) for k in ("connected", "worker", "state", "last_heartbeat")},
                "batches": batches,
                "last_batch": last_batch or last_evaluated,
                "last_evaluated_batch": last_evaluated,
                "open_drift_alerts": open_alerts,
                "requires_training": bool(reasons),
                "training_reasons": reasons,
                "model": models["sites"][name],
            }
        )
    connected = sum(1 for s in sites if s["supernode"]["connected"])
    return {
        "sites": sites,
        "min_clients": MIN_CLIENTS,
        "summary": {
            "registered": sum(1 for s in sites if s["registered"]),
            "connected": connected,
            "edge_workers_connected": sum(1 for s in sites if s["edge_worker"]["connected"]),
            "requiring_training": [s["site"] for s in sites if s["requires_training"]],
            "min_clients": MIN_CLIENTS,
            "can_train": connected >= MIN_CLIENTS,
        },
        "superlink": status["superlink"],
        "runs": last_runs,
        "models": models,
        "errors": errors,
        "urls": status["urls"],
    }
