"""The drift_alerts table: what an evaluation records, and the review's status transitions and their authors."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from drift.alerts import ACTIONS, STATUSES, TRANSITIONS, AlertError, AlertStore
from mledge.db import migrate


@pytest.fixture
def store():
    alerts = AlertStore("sqlite://")  # in memory: one shared connection
    yield alerts
    alerts.dispose()


def _add(store, decision="drift", site="plant_b", batch="batch-000005", kind="data", **extra):
    values = dict(site=site, batch=batch, kind=kind, statistic=0.17, p_value=0.001, decision=decision,
                  report_uri="mlflow-artifacts:/1/abc/artifacts/reports/data_drift.html")
    values.update(extra)
    return store.add(**values)


def test_contract_constants():
    assert STATUSES == ("new", "acknowledged", "dismissed", "retraining", "resolved")
    assert ACTIONS == {"acknowledge": "acknowledged", "dismiss": "dismissed", "approve": "retraining",
                       "resolve": "resolved"}


def test_a_drift_starts_new_and_a_clean_result_is_recorded_resolved(store):
    drift = _add(store, details={"columns": {"process_temperature_k": {"p_value": 1e-80}}})
    clean = _add(store, decision="no_drift", batch="batch-000004", p_value=0.8)
    assert set(drift) == {"id", "site", "batch", "kind", "statistic", "p_value", "decision", "report_uri", "status",
                          "created_at", "updated_at", "updated_by", "note", "details"}
    assert (drift["status"], drift["updated_by"], drift["decision"]) == ("new", "system", "drift")
    assert (clean["status"], clean["updated_by"], clean["note"]) == ("resolved", "system", "no drift detected")
    assert drift["details"]["columns"]["process_temperature_k"]["p_value"] == 1e-80
    assert clean["details"] == {}
    created = datetime.fromisoformat(drift["created_at"])
    assert created.tzinfo is not None and drift["created_at"] == drift["updated_at"]


def test_list_filters_and_orders_newest_first(store):
    a = _add(store, site="plant_a", decision="no_drift")
    b = _add(store, site="plant_b")
    c = _add(store, site="plant_b", kind="concept", decision="no_drift")
    assert [x["id"] for x in store.list()] == [c["id"], b["id"], a["id"]]
    assert [x["id"] for x in store.list(site="plant_b")] == [c["id"], b["id"]]
    assert [x["id"] for x in store.list(status="new")] == [b["id"]]
    assert store.list(site="plant_b", status="resolved") == [store.get(c["id"])]
    with pytest.raises(AlertError, match="status must be one of"):
        store.list(status="open")


def test_review_records_who_changed_it_and_allows_only_listed_transitions(store):
    alert = _add(store)
    acknowledged = store.set_status(alert["id"], "acknowledged", "alice", "looking at the sensor")
    assert (acknowledged["status"], acknowledged["updated_by"], acknowledged["note"]) == (
        "acknowledged", "alice", "looking at the sensor")
    assert acknowledged["updated_at"] >= alert["updated_at"] and acknowledged["created_at"] == alert["created_at"]
    with pytest.raises(AlertError) as err:
        store.set_status(alert["id"], "new", "bob")
    assert "'acknowledged'" in str(err.value) and "cannot become 'new'" in str(err.value)
    approved = store.set_status(alert["id"], "retraining", "bob")
    assert (approved["status"], approved["updated_by"]) == ("retraining", "bob")
    resolved = store.set_status(alert["id"], "resolved", "system", "new champion v4")
    with pytest.raises(AlertError, match="none \\(final\\)"):
        store.set_status(alert["id"], "acknowledged", "carol")
    assert store.get(alert["id"]) == resolved
    assert [(h["from_status"], h["to_status"], h["user"]) for h in store.history(alert["id"])] == [
        (None, "new", "system"),
        ("new", "acknowledged", "alice"),
        ("acknowledged", "retraining", "bob"),
        ("retraining", "resolved", "system"),
    ]


@pytest.mark.parametrize("start", STATUSES)
def test_every_transition_follows_the_table(store, start):
    paths = {"new": [], "acknowledged": ["acknowledged"], "dismissed": ["dismissed"],
             "retraining": ["retraining"], "resolved": ["resolved"]}
    for target in STATUSES:
        alert = _add(store)
        for step in paths[start]:
            store.set_status(alert["id"], step, "setup")
        if target in TRANSITIONS[start]:
            assert store.set_status(alert["id"], target, "dana")["status"] == target
        else:
            with pytest.raises(AlertError):
                store.set_status(alert["id"], target, "dana")
            assert store.get(alert["id"])["status"] == start


def test_bad_input_is_refused_with_a_clear_error(store):
    with pytest.raises(AlertError, match="kind"):
        _add(store, kind="label")
    with pytest.raises(AlertError, match="decision"):
        _add(store, decision="maybe")
    with pytest.raises(AlertError, match="p_value"):
        _add(store, p_value=1.5)
    with pytest.raises(AlertError, match="site and a batch"):
        _add(store, site="")
    alert = _add(store)
    with pytest.raises(AlertError, match="user"):
        store.set_status(alert["id"], "acknowledged", " ")
    with pytest.raises(AlertError, match="status must be one of"):
        store.set_status(alert["id"], "closed", "erin")
    with pytest.raises(AlertError, match="no drift alert with id 999"):
        store.get(999)


def test_non_finite_numbers_are_stored_as_null(store):
    alert = _add(store, statistic=math.nan, p_value=math.nan, details={"x": math.inf, "y": [1.0, math.nan]})
    assert alert["statistic"] is None and alert["p_value"] is None
    assert alert["details"] == {"x": None, "y": [1.0, None]}


def test_a_fresh_database_is_migrated_once_and_unknown_alerts_are_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    store = AlertStore(url)
    assert store.list() == []
    with pytest.raises(AlertError, match="no drift alert with id 1"):
        store.get(1)
    assert migrate(url) == migrate(url) == "0002"  # idempotent: the store already migrated it
    assert AlertStore(url).list() == []


def test_a_label_rate_anomaly_waits_for_a_person(store):
    anomaly = _add(store, kind="label_rate", decision="anomaly", statistic=0.0, p_value=0.001)
    assert (anomaly["status"], anomaly["kind"], anomaly["decision"]) == ("new", "label_rate", "anomaly")
    assert store.history(anomaly["id"])[0]["note"] == "label_rate anomaly found"
    with pytest.raises(AlertError, match="decision must be one of"):
        _add(store, decision="lost")


def test_a_0001_database_keeps_its_alerts_through_0002_and_back(tmp_path):
    """0002 widens the kind and decision checks (SQLite copies the table): rows, indexes and history stay;
    the downgrade removes only what 0001 cannot hold."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from mledge.db.migrate import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def to(revision: str, how=command.upgrade) -> None:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            how(config, revision)

    to("0001")
    now = datetime(2026, 12, 1)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO drift_alerts (site, batch, kind, decision, status, created_at, updated_at, updated_by, "
            "note) VALUES ('plant_b', 'batch-000005', 'concept', 'drift', 'new', :t, :t, 'system', '')"), {"t": now})
        with pytest.raises(sa.exc.IntegrityError):  # 0001 knows no label-rate alerts
            with conn.begin_nested():
                conn.execute(sa.text(
                    "INSERT INTO drift_alerts (site, batch, kind, decision, status, created_at, updated_at, "
                    "updated_by, note) VALUES ('plant_c', 'b', 'label_rate', 'anomaly', 'new', :t, :t, 's', '')"),
                    {"t": now})
    engine.dispose()
    alerts = AlertStore(url)  # migrates to head
    assert [(a["site"], a["kind"], a["decision"]) for a in alerts.list()] == [("plant_b", "concept", "drift")]
    added = _add(alerts, kind="label_rate", decision="anomaly", site="plant_c")
    indexes = {i["name"] for i in sa.inspect(alerts.engine).get_indexes("drift_alerts")}
    assert {"ix_drift_alerts_site", "ix_drift_alerts_status"} <= indexes
    alerts.dispose()
    to("0001", command.downgrade)
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT site, kind FROM drift_alerts")).all()
        events = conn.execute(sa.text("SELECT alert_id FROM drift_alert_events")).scalars().all()
    assert left == [("plant_b", "concept")] and added["id"] not in events
    engine.dispose()


def test_a_file_database_keeps_its_rows_for_the_next_reader(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    writer = AlertStore(url)
    alert = _add(writer)
    writer.set_status(alert["id"], "dismissed", "frank", "known maintenance")
    writer.dispose()
    reader = AlertStore(url)
    assert reader.get(alert["id"])["updated_by"] == "frank"
    assert [h["to_status"] for h in reader.history(alert["id"])] == ["new", "dismissed"]


def test_approving_an_alert_in_retraining_again_changes_and_records_nothing(store):
    """A retried fl_train, or a second click after an Asset event failed to go out, approves again: allowed (so the
    retraining request can be emitted again) and idempotent."""
    alert = _add(store)
    approved = store.set_status(alert["id"], "retraining", "bob", "sensor replaced")
    again = store.set_status(alert["id"], "retraining", "airflow:auto-retrain", "retried")
    assert again == approved == store.get(alert["id"])
    assert [(h["from_status"], h["to_status"]) for h in store.history(alert["id"])] == [
        (None, "new"), ("new", "retraining")]
    acknowledged = store.set_status(_add(store, batch="batch-000006")["id"], "acknowledged", "alice")
    with pytest.raises(AlertError, match="cannot become 'acknowledged'"):  # other statuses are not re-entered
        store.set_status(acknowledged["id"], "acknowledged", "alice")
