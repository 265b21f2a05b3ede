"""A training run resolves only the drift alerts whose Asset events started it: their ids reach registration."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Asset
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

from mledge.contracts import EVENT_ALERT_IDS
from operators.assets import DRIFT, drift_alert_ids


def _event(asset: Asset, extra: dict) -> AssetEventDagRunReferenceResult:
    return AssetEventDagRunReferenceResult(
        asset={"name": asset.name, "uri": asset.uri, "extra": {}}, extra=extra, source_task_id="fl_train",
        source_dag_id="concept_drift_evaluation", source_run_id="scheduled__1", source_map_index=-1,
        source_aliases=[], timestamp=datetime(2026, 12, 2, tzinfo=UTC),
    )


def test_ids_come_from_the_drift_events_that_started_the_run_once_each():
    other = Asset(uri="mledge://elsewhere/thing", name="thing")
    events = TriggeringAssetEventsAccessor.build([
        _event(DRIFT, {EVENT_ALERT_IDS: [7, 3], "site": "plant_b"}),
        _event(DRIFT, {EVENT_ALERT_IDS: [3], "site": "plant_b"}),  # approved again: the same alert
        _event(DRIFT, {"site": "plant_a"}),  # an event without ids (made by hand in the UI)
        _event(other, {EVENT_ALERT_IDS: [99]}),  # not a drift event
    ])
    assert drift_alert_ids(events) == [3, 7]


def test_a_run_started_by_hand_has_none():
    assert drift_alert_ids(TriggeringAssetEventsAccessor.build([])) == []
    assert drift_alert_ids(None) == []


def test_registration_is_given_exactly_those_ids():
    from airflow.dag_processing.dagbag import DagBag
    from conftest import DAGS

    class _Ti:  # the run id that await_flower_run reported
        @staticmethod
        def xcom_pull(task_ids: str) -> dict:
            return {"run_id": "42"}

    dag = DagBag(dag_folder=str(DAGS / "federated_training.py")).dags["federated_training"]
    task = dag.get_task("register_and_promote")
    events = TriggeringAssetEventsAccessor.build([_event(DRIFT, {EVENT_ALERT_IDS: [5, 2]})])
    rendered = task.render_template(
        task.arguments, {"triggering_asset_events": events, "ti": _Ti(), "params": {"site_margin": 0.0},
         **dag.user_defined_macros},
        jinja_env=dag.get_template_env(),
    )
    flag = rendered.index("--drift-alert-ids")
    assert rendered[flag + 1] == "[2, 5]"
