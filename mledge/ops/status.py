"""One view of the platform: sites and their SuperNodes, recent Flower runs, registered models and aliases."""

from __future__ import annotations

import re
from typing import Any

from mledge.contracts import FLWR_CONNECTION
from mledge.ops import stack
from mledge.ops.settings import Settings

NODE_ID = re.compile(r"SuperNode ID: (\d+)")
# Edge worker states (apache-airflow-providers-edge3) in which a worker serves its queue.
SERVING = ("starting", "running", "idle")



def supernode_id(settings: Settings, site: str) -> str | None:
    """The node id the site's SuperNode last reported in its log (node ids change when a SuperNode restarts)."""
    path = settings.logs / f"supernode-{site}.log"
    if not path.exists():
        return None
    found = NODE_ID.findall(path.read_text(errors="replace"))
    return found[-1] if found else None


def _flower(settings: Settings) -> tuple[set[str], list[dict], str | None]:
    from fl.runs import FlowerError, online_nodes, recent_runs

    flwr_bin = str(settings.bin("workload", "flwr"))
    try:
        online = {n["node-id"] for n in online_nodes(FLWR_CONNECTION, flwr_bin)}
        runs = recent_runs(FLWR_CONNECTION, flwr_bin)
    except FlowerError as exc:
        return set(), [], str(exc)
    keep = ("run-id", "status", "status-details", "pending-at", "finished-at", "elapsed")
    return online, [{k.replace("-", "_"): r.get(k) for k in keep} for r in runs], None


def registered_models(pattern: str = "%axis_failures%") -> list[dict[str, Any]]:
    import mlflow

    client = mlflow.MlflowClient()
    models = []
    for model in client.search_registered_models(filter_string=f"name LIKE '{pattern}'"):
        # search_model_versions leaves aliases empty (mlflow#16734): take them from the registered model.
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        versions = sorted(
            client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version), reverse=True
        )
        models.append(
            {
                "name": model.name,
                "aliases": dict(model.aliases or {}),
                "versions": [
                    {
                        "version": v.version,
                        "aliases": sorted(by_version.get(str(v.version), [])),
                        "run_id": v.run_id,
                        "flower_run_id": v.tags.get("mledge.flower_run_id"),
                        "dag_run_id": v.tags.get("mledge.dag_run_id"),
                        "promotion_reason": v.tags.get("mledge.promotion_reason"),
                    }
                    for v in versions
                ],
            }
        )
    return models


def _log(settings: Settings, name: str) -> str:
    path = settings.logs / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def edge_workers(settings: Settings, user: str = "admin") -> list[dict]:
    """The edge workers Airflow knows, read through its API as ``user`` (whose password the platform keeps)."""
    from mledge.ops.airflow_api import AirflowClient
    from mledge.ops.components import airflow_password

    return AirflowClient(settings.airflow_url, user, airflow_password(settings, user)).edge_workers()


def site_worker(workers: list[dict], site: str) -> dict[str, Any]:
    """The site's edge worker among ``workers``: whether it serves the site's queue now, its state, heartbeat."""
    serving = [w for w in workers if site in (w.get("queues") or [])]
    connected = [w for w in serving if w["state"] in SERVING]
    seen = (connected or serving or [None])[0]
    return {
        "site": site,
        "connected": bool(connected),
        "worker": seen["worker_name"] if seen else None,
        "state": seen["state"] if seen else "never registered",
        "last_heartbeat": seen.get("last_heartbeat") if seen else None,
    }


def collect(settings: Settings) -> dict[str, Any]:
    from mledge.onsite.store import batch_paths
    from mledge.security.node_keys import public_key_path, refused_nodes, supernode_refusal

    components = stack.status(settings)
    online, runs, flower_error = _flower(settings)
    try:
        workers, workers_error = edge_workers(settings), None
    except Exception as exc:  # Airflow being down is a fact to report, not a crash
        workers, workers_error = [], f"{exc.__class__.__name__}: {exc}"
    sites = []
    for site in settings.sites:
        node_id = supernode_id(settings, site)
        process = components.get(f"supernode-{site}", {})
        sites.append(
            {
                "site": site,
                "store": str(settings.site_store(site)),
                "batches": len(batch_paths(settings.site_store(site))),
                "supernode_pid": process.get("pid"),
                # Its trainer (the ClientApp's handlers, warm): running, and ready once warmed up.
                "trainer": {k: components.get(f"trainer-{site}", {}).get(k) for k in ("pid", "healthy")},
                "node_id": node_id,
                "connected": bool(process.get("pid")) and node_id in online,
                # Why it is not connected, when the SuperLink refused its key (None otherwise).
                "refused": supernode_refusal(_log(settings, f"supernode-{site}")),
                "edge_worker": {
                    "pid": components.get(f"edge-worker-{site}", {}).get("pid"),
                    **site_worker(workers, site),
                },
            }
        )
    site_keys = {s: public_key_path(settings.site_store(s)) for s in settings.sites}
    try:
        models = registered_models()
        models_error = None
    except Exception as exc:  # the registry being down is a fact to report, not a crash
        models, models_error = [], f"{exc.__class__.__name__}: {exc}"
    return {
        "sites": sites,
        "superlink": {
            "address": settings.superlink_address,
            "online_nodes": len(online),
            "error": flower_error,
            # Sites (or unknown keys) whose SuperNode the SuperLink refused since it started.
            "refused": refused_nodes(_log(settings, "superlink"), site_keys),
        },
        "edge_workers_error": workers_error,
        "flower_runs": runs,
        "registered_models": models,
        "registry_error": models_error,
        "components": components,
        "urls": {"airflow": settings.airflow_url, "mlflow": settings.mlflow_uri},
    }
