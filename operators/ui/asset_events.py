"""An approved drift alert becomes an Airflow Asset event: the DAGs scheduled on the drift Asset then run.

Done the way Airflow's own ``POST /api/v2/assets/events`` does it, inside the api-server: look the Asset up in
the metadata database and hand it to Airflow's asset manager, which records the event and queues the unpaused
DAGs scheduled on it. The event's ``extra`` says which alert, site and person caused it (lineage for training).
"""

from __future__ import annotations

from typing import Any

from operators.assets import DRIFT_URI as DRIFT_ASSET_URI


class AssetEventError(RuntimeError):
    """The drift Asset is unknown to Airflow, or its event could not be recorded."""


def _asset(session: Any, uri: str) -> Any:
    from airflow.models.asset import AssetModel
    from sqlalchemy import select

    asset = session.scalar(select(AssetModel).where(AssetModel.uri == uri).limit(1))
    if asset is None:
        raise AssetEventError(
            f"Airflow knows no Asset {uri!r}: no parsed DAG is scheduled on it or produces it "
            "(is the federated_training DAG parsed?), so an approval could not start retraining"
        )
    return asset


def check_drift_asset(uri: str = DRIFT_ASSET_URI) -> None:
    """Fail before an approval is recorded if its Asset event could not be emitted."""
    from airflow.utils.session import create_session

    with create_session() as session:
        _asset(session, uri)


def emit_drift_approval(alert: dict, user: str, uri: str = DRIFT_ASSET_URI) -> dict[str, Any]:
    """Record the Asset event for an approved alert; returns the event and which DAGs it queued or not."""
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import select

    # The same keys as the automatic path (operators.drift.RequestRetrainingOperator), plus this alert's own.
    extra = {
        "site": alert.get("site"),
        "alert_ids": [alert.get("id")],
        "requested_by": user,
        "alert_id": alert.get("id"),
        "batch": alert.get("batch"),
        "kind": alert.get("kind"),
        "source": "mledge-drift-review",
    }
    with create_session() as session:
        asset = _asset(session, uri)
        event = asset_manager.register_asset_change(
            asset=asset, extra=extra, source_is_api=True, session=session
        )
        if event is None:
            raise AssetEventError(f"Airflow did not record an event for Asset {uri!r}; see the api-server log")
        session.flush()
        queued = sorted(
            session.scalars(select(AssetDagRunQueue.target_dag_id).where(AssetDagRunQueue.asset_id == asset.id))
        )
        consumers = {ref.dag_id: bool(ref.dag and ref.dag.is_paused) for ref in asset.scheduled_dags}
        return {
            "asset_uri": uri,
            "event_id": event.id,
            "timestamp": event.timestamp.isoformat(),
            "extra": extra,
            "queued_dag_ids": queued,
            # A paused consumer is not queued: Airflow drops the trigger, so the page says so.
            "paused_dag_ids": sorted(dag_id for dag_id, paused in consumers.items() if paused),
        }
