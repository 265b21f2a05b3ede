"""Which drift alerts a retraining resolves: only those whose Asset events started it, once."""

from __future__ import annotations

import pytest

from drift.alerts import AlertStore
from mledge.registry.retraining import alerts_in_retraining, resolve_alerts

RESULT = {"dag_run_id": "asset_triggered__1", "flower_run_id": "42", "registered_model": "axis_failures-global",
          "version": "3", "alias": "champion",
          "site_models": {"plant_b": {"registered_model": "plant_b-axis_failures-federated", "version": "2",
                                      "alias": "champion"}}}


@pytest.fixture
def alerts():
    store = AlertStore("sqlite://")
    yield store
    store.dispose()


def _approved(alerts: AlertStore, batch: str) -> int:
    alert_id = alerts.add(site="plant_b", batch=batch, kind="concept", statistic=30.0, p_value=1e-6, decision="drift",
                          report_uri=None)["id"]
    alerts.set_status(alert_id, "retraining", "alice")
    return alert_id


def test_only_the_alerts_that_started_the_run_are_resolved_and_a_retry_resolves_nothing_more(alerts):
    started_it = _approved(alerts, "batch-000005")
    approved_later = _approved(alerts, "batch-000006")  # approved while the run trained: its own run will follow
    pending = alerts.add(site="plant_a", batch="batch-000004", kind="data", statistic=0.2, p_value=1e-4,
                         decision="drift", report_uri=None)["id"]  # new, nobody approved it

    waiting = alerts_in_retraining(alerts, [started_it, pending, started_it])
    assert [a["id"] for a in waiting] == [started_it]
    assert resolve_alerts(alerts, waiting, RESULT) == [started_it]
    resolved = alerts.get(started_it)
    assert resolved["status"] == "resolved" and "Flower run 42" in resolved["note"]
    assert "plant_b-axis_failures-federated v2" in resolved["note"]
    assert [alerts.get(i)["status"] for i in (approved_later, pending)] == ["retraining", "new"]

    # register_and_promote retried: the same ids find nothing left to resolve, and no history entry is added.
    history = alerts.history(started_it)
    assert alerts_in_retraining(alerts, [started_it]) == []
    assert alerts.history(started_it) == history


def test_a_run_without_drift_alert_ids_resolves_none(alerts):
    _approved(alerts, "batch-000005")
    assert alerts_in_retraining(alerts, []) == []
