"""The platform's decision per unit: drift, no drift, insufficient data, label-rate anomaly; families apart;
alerts and processed marks; the champion's track record."""

from __future__ import annotations

import pytest

from drift.alerts import AlertStore
from drift.decision import INSUFFICIENT, LABEL_ANOMALY, batch_metrics, decide, decide_batch
from drift.history import calibration_batches
from drift.tracking import ProcessedBatches

CHAMPION = {"name": "global-axis_failures-federated", "version": "4", "data_window": "batch-000001:batch-000003"}


def _data(**p_values):
    columns = {c: {"method": "mledge_ks", "p_value": p, "computed": p is not None, "reason": None}
               for c, p in p_values.items()}
    return {"columns": columns, "share_drifted": 0.0, "html": None, "json": None}


def _concept(fn=0.5, fp=0.5, observed=30, expected=30.0, share=1.0, label_p=0.5, fp_computed=True):
    tests = {
        "false_negatives": {"observed": 8, "expected": 8.0, "p_value": fn, "computed": True},
        "false_positives": {"observed": 40, "expected": 40.0, "p_value": fp, "computed": fp_computed},
    }
    return {
        "tests": tests, "p_value": min(fn, fp), "statistic": 0.0, "current_rows": 1000, "reference_rows": 600,
        "current_failure_rate": observed / 1000, "reference_failure_rate": 0.03, "sufficient": True,
        "label_rate": {"observed": observed, "expected": expected, "share": share, "p_value": label_p},
    }


CLEAN_DATA = _data(type=0.4, air_temperature_k=None, torque_nm=0.7)


def test_concept_drift_is_found_by_either_direction():
    fn = decide_batch(CLEAN_DATA, _concept(fn=0.001), 0.05, 3)
    assert (fn["outcome"], fn["drift"], fn["concept"]["decision"]) == ("drift", True, "drift")
    assert fn["concept"]["drifted_tests"] == ["false_negatives"]
    fp = decide_batch(CLEAN_DATA, _concept(fp=0.001), 0.05, 3)
    assert fp["concept"]["drifted_tests"] == ["false_positives"] and fp["drift"]


def test_no_drift():
    decision = decide_batch(CLEAN_DATA, _concept(fn=0.2, fp=0.03), 0.05, 3)
    assert (decision["outcome"], decision["drift"]) == ("no_drift", False)
    assert decision["data"]["not_computed"] == {"air_temperature_k": None}
    assert decision["label_rate"]["decision"] == "normal"


def test_the_concept_family_is_corrected_on_its_own():
    """A covariate shift that every data test sees (p = 1e-50) must not lower the concept test's bar: one Holm
    procedure over both let a concept p of 0.01 through once the data tests had rejected."""
    shifted = _data(type=1e-50, rotational_speed_rpm=1e-40, torque_nm=1e-30, tool_wear_min=1e-20)
    decision = decide_batch(shifted, _concept(fn=0.01, fp=0.6), 0.05, 3)
    assert decision["data"]["decision"] == "drift"
    assert decision["concept"]["decision"] == "no_drift"
    assert decision["concept"]["correction"]["level"] == pytest.approx(0.05 / 6)
    assert decision["data"]["correction"]["level"] == pytest.approx(0.05 / 6)


def test_a_test_without_enough_rows_does_not_count():
    decision = decide_batch(CLEAN_DATA, _concept(fn=0.003, fp=0.0001, fp_computed=False), 0.05, 3)
    assert decision["concept"]["tests"]["false_positives"]["drift"] is False
    assert decision["concept"]["drifted_tests"] == ["false_negatives"]  # alone in its family: 0.003 <= 0.0083


def test_insufficient_data_is_no_alarm_and_no_decision():
    decision = decide_batch(None, None, 0.05, 3, status="insufficient_data", reason="120 rows < 200")
    assert decision == {"outcome": INSUFFICIENT, "drift": False, "data": None, "concept": None, "label_rate": None,
                        "reason": "120 rows < 200"}


def test_lost_labels_are_a_finding_of_their_own_not_concept_drift():
    lost = _concept(fn=0.0001, fp=0.0001, observed=0, expected=34.0, share=0.0, label_p=1e-9)
    decision = decide_batch(_data(type=1e-9), lost, 0.05, 3)
    assert decision["outcome"] == LABEL_ANOMALY and decision["label_rate"]["decision"] == "anomaly"
    assert decision["concept"] is None  # not decided on such labels
    assert decision["data"]["decision"] == "drift" and decision["drift"] is False  # recorded, starts nothing
    # Fewer failures than expected, but most of them there: that is a concept question, not lost labels.
    fewer = decide_batch(CLEAN_DATA, _concept(fn=0.3, fp=0.001, observed=20, expected=34.0, share=0.59,
                                              label_p=0.001), 0.05, 3)
    assert fewer["outcome"] == "drift" and fewer["label_rate"]["decision"] == "normal"
    empty = decide_batch(None, None, 0.05, 3, status="empty")
    assert empty["outcome"] == LABEL_ANOMALY and empty["label_rate"]["reason"] == "the batch has no rows"
    # Not significant enough (a small expected count): no finding, whatever the share.
    unsure = decide_batch(CLEAN_DATA, _concept(observed=0, expected=4.0, share=0.0, label_p=0.02), 0.05, 3)
    assert unsure["label_rate"]["decision"] == "normal" and unsure["outcome"] == "no_drift"


def test_a_small_unit_whose_labels_were_lost_is_decided_without_tests():
    label = {"observed": 0, "expected": 40.0, "share": 0.0, "p_value": 0.001}
    decision = decide_batch(None, None, 0.05, 3, status="labels_lost", label_rate=label, reason="150 rows < 200")
    assert (decision["outcome"], decision["drift"], decision["data"], decision["concept"]) == (
        LABEL_ANOMALY, False, None, None)
    assert decision["label_rate"]["decision"] == "anomaly"
    with pytest.raises(ValueError, match="labels_lost"):  # the site and the platform apply the same rule
        decide_batch(None, None, 0.05, 3, status="labels_lost", label_rate={**label, "share": 0.6})
    with pytest.raises(ValueError, match="unknown unit status"):
        decide_batch(CLEAN_DATA, _concept(), 0.05, 3, status="pooled")


def test_metrics_for_the_timeline():
    metrics = batch_metrics(decide_batch(CLEAN_DATA, _concept(fn=0.001), 0.05, 3))
    assert metrics["drift"] == 1.0 and metrics["concept_drift"] == 1.0 and metrics["insufficient_data"] == 0.0
    assert metrics["concept_false_negatives_p_value"] == 0.001 and "data_p_value.air_temperature_k" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    waiting = batch_metrics(decide_batch(None, None, status="insufficient_data"))
    assert waiting == {"drift": 0.0, "insufficient_data": 1.0, "label_rate_anomaly": 0.0}


@pytest.fixture
def platform(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    alerts, tracker = AlertStore(url), ProcessedBatches(url)
    yield alerts, tracker
    alerts.dispose()
    tracker.dispose()


def _unit(name, batches, status="measured", data=CLEAN_DATA, concept=None, reason=None):
    return {"name": name, "batches": batches}, {"status": status, "data": data, "concept": concept,
                                                "label_rate": (concept or {}).get("label_rate"), "reason": reason}


def test_decide_records_units_and_leaves_insufficient_ones_waiting(platform):
    alerts, tracker = platform
    units = [
        _unit("batch-000004", ["batch-000004"], concept=_concept()),
        _unit("batch-000005", ["batch-000005"], concept=_concept(fn=0.0005)),
        _unit("batch-000006", ["batch-000006"], status="empty", data=None),
        _unit("batch-000007", ["batch-000007"],
              concept=_concept(observed=0, expected=30.0, share=0.0, label_p=1e-6)),
        _unit("batch-000008:batch-000009", ["batch-000008", "batch-000009"], status="insufficient_data", data=None,
              reason="150 rows < 200"),
    ]
    plan = {"unprocessed": [f"batch-{n:06d}" for n in range(4, 10)], "units": [u for u, _ in units],
            "evaluation_id": "e1", "reference": ["batch-000001"], "reference_source": "test", "champion": CHAMPION}
    published = []
    result = decide("plant_c", plan, {u["name"]: r for u, r in units}, alerts, tracker, n_sites=3,
                    publish=lambda **kw: published.append(kw) or {"report_uri": None, "mlflow_run_id": "r"})
    assert result["drift"] and result["concept_drift"] and result["label_rate_anomaly"]
    assert not result["data_drift"]
    assert result["waiting"] == [{"unit": "batch-000008:batch-000009", "batches": ["batch-000008", "batch-000009"],
                                  "reason": "150 rows < 200"}]
    assert tracker.processed("plant_c") == {"batch-000004", "batch-000005", "batch-000006", "batch-000007"}
    kinds = {(a["batch"], a["kind"], a["decision"], a["status"]) for a in alerts.list()}
    assert ("batch-000005", "concept", "drift", "new") in kinds
    assert ("batch-000004", "concept", "no_drift", "resolved") in kinds
    assert ("batch-000006", "label_rate", "anomaly", "new") in kinds
    assert ("batch-000007", "label_rate", "anomaly", "new") in kinds
    assert not any(b == "batch-000007" and k == "concept" for b, k, _, _ in kinds)
    assert not any(b.startswith("batch-000008") for b, _, _, _ in kinds)
    # Every unit reaches the timeline, the waiting one too, at its last batch's number.
    assert [p["step"] for p in published] == [4, 5, 6, 7, 9]
    # The track record: only the batch the champion handled without concept drift.
    assert calibration_batches(tracker.engine, "plant_c", CHAMPION) == ["batch-000004"]
    assert calibration_batches(tracker.engine, "plant_c", {**CHAMPION, "version": "5"}) == []
    assert calibration_batches(tracker.engine, "plant_c", None) == []
    # A lost-label unit whose data tests fired is recorded for a person but requests no retraining.
    lost = _unit("batch-000010", ["batch-000010"], data=_data(type=1e-12),
                 concept=_concept(observed=0, expected=30.0, share=0.0, label_p=1e-6))
    only = decide("plant_c", {**plan, "unprocessed": ["batch-000010"], "units": [lost[0]], "evaluation_id": "e2"},
                  {lost[0]["name"]: lost[1]}, alerts, tracker, n_sites=3)
    assert only["label_rate_anomaly"] and only["drift"] is False
    assert {(a["kind"], a["decision"]) for a in only["alerts"]} == {("data", "drift"), ("label_rate", "anomaly")}
    # A batch with few failures (not significantly few) is decided, but stays out of the track record.
    few = _unit("batch-000011", ["batch-000011"], concept=_concept(observed=5, expected=30.0, share=5 / 30,
                                                                    label_p=0.05))
    decide("plant_c", {**plan, "unprocessed": ["batch-000011"], "units": [few[0]], "evaluation_id": "e3"},
           {few[0]["name"]: few[1]}, alerts, tracker, n_sites=3)
    assert "batch-000011" in tracker.processed("plant_c")
    assert calibration_batches(tracker.engine, "plant_c", CHAMPION) == ["batch-000004"]
    # A retry records nothing twice; the waiting unit is still waiting.
    again = decide("plant_c", plan, {u["name"]: r for u, r in units}, alerts, tracker, n_sites=3)
    assert again["alerts"] == [] and len(again["waiting"]) == 1
