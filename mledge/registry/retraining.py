"""Closing a retraining: register and promote a run's models, then resolve the drift alerts that asked for it.

Also what a finished Flower run left in MLflow for the DAG: which sites failed and why, and their compute time.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from drift.alerts import AlertStore
from mledge.registry.promotion import find_run, promote, read_evidence


def alerts_in_retraining(alerts: AlertStore, alert_ids: Iterable[int]) -> list[dict]:
    """Of the alerts whose retraining a run is (the ids its triggering Asset events carried), those still waiting:
    approved (by a person or automatically), not yet resolved. An alert approved after the run started is not
    among them: this run did not train on its request. A retried registration finds them resolved already."""
    return [alert for alert in (alerts.get(int(i)) for i in sorted(set(alert_ids))) if alert["status"] == "retraining"]


def resolve_alerts(alerts: AlertStore, resolved: list[dict], result: dict) -> list[int]:
    """Resolve ``resolved`` with a note naming the run and the versions it produced; returns their ids."""
    if not resolved:
        return []
    versions = ", ".join(
        f"{m['registered_model']} v{m['version']} ({m['alias']})" for m in [result, *result["site_models"].values()]
    )
    note = f"retrained by DAG run {result['dag_run_id']} (Flower run {result['flower_run_id']}): {versions}"
    for alert in resolved:
        alerts.set_status(alert["id"], "resolved", user="platform", note=note)
    return [a["id"] for a in resolved]


def promote_and_resolve(
    flower_run_id: str,
    alerts: AlertStore | None,
    *,
    alert_ids: Iterable[int] = (),
    metric: str = "f1",
    margin: float = 0.0,
    site_margin: float = 0.0,
) -> dict:
    """Register the run's models through the gates; with ``alerts``, link and resolve those of ``alert_ids`` that
    are in retraining (the alerts whose Asset events started this run)."""
    waiting = alerts_in_retraining(alerts, alert_ids) if alerts is not None else []
    result = promote(
        flower_run_id,
        metric=metric,
        margin=margin,
        site_margin=site_margin,
        drift_alerts=",".join(str(a["id"]) for a in waiting),
    )
    result["resolved_drift_alerts"] = resolve_alerts(alerts, waiting, result) if alerts is not None else []
    return result


def run_outcome(flower_run_id: str, platform_home: Path) -> dict[str, Any]:
    """Which sites failed in a run and why, and their compute seconds, as the ServerApp recorded them: from the
    run's outbox at the platform (there even while MLflow is down), else from MLflow."""
    from fl.outbox import Outbox, outbox_dir
    from fl.protocol import PromotionEvidence
    from mledge.contracts import EVIDENCE_PATH

    folder = outbox_dir(platform_home, flower_run_id)
    documents = Outbox(folder).documents() if folder.exists() else {}
    if EVIDENCE_PATH in documents:
        evidence = PromotionEvidence.from_dict(documents[EVIDENCE_PATH])
        mlflow_run_id = Outbox(folder).published().get("run_id")
    else:
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            run = find_run(mlflow.MlflowClient(), flower_run_id)
            evidence, mlflow_run_id = read_evidence(run), run.info.run_id
        except (LookupError, MlflowException, OSError, ValueError) as exc:
            return {"mlflow_run_id": None, "site_failures": {}, "compute_seconds": {}, "note": f"no record: {exc}"}
    return {
        "mlflow_run_id": mlflow_run_id,
        "site_failures": evidence.failures,
        "compute_seconds": evidence.compute_seconds,
    }
