"""The per-site pipeline without MLflow: reference windows, the workspace between steps, no-champion runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from drift.alerts import AlertStore
from drift.decision import decide as decide_at_platform
from drift.tracking import ProcessedBatches
from mledge.onsite.concept_drift import MIN_ROWS
from mledge.onsite.drift_evaluation import (
    Champion,
    archive,
    evaluate,
    measured,
    plan_evaluation,
    read_plan,
    simulate,
    workspace,
)
from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.schema import COLUMNS, LABEL
from mledge.onsite.store import SiteDataError, append_generated_batch


def decide(store, site, alerts, tracker, *, n_sites=1, publish=None):
    """Step 4 as `mledge drift decide` runs it: the site's measurements, the platform's decision, the archive."""
    plan, results = measured(store, site, tracker.processed(site))
    result = decide_at_platform(site, plan, results, alerts, tracker, n_sites=n_sites, publish=publish)
    archive(store)
    return result


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "sites" / "plant_c"
    for _ in range(5):
        append_generated_batch(path, SITES["plant_c"], rows=600)
    return path


def _names(*numbers):
    return [f"batch-{n:06d}" for n in numbers]


def test_reference_window_from_the_champions_tag(store):
    champion = Champion("global-axis_failures-federated", "3", "batch-000002:batch-000003")
    plan = plan_evaluation(store, "plant_c", set(), champion)
    assert plan["reference"] == _names(2, 3)
    assert plan["unprocessed"] == _names(4, 5)  # training data (<= 3) are never evaluated
    assert "mledge.data_window.plant_c" in plan["reference_source"] and "version 3" in plan["reference_source"]
    assert plan["champion"] == {"name": "global-axis_failures-federated", "version": "3",
                                "data_window": "batch-000002:batch-000003"}
    assert plan_evaluation(store, "plant_c", set(_names(4)), champion)["unprocessed"] == _names(5)


def test_reference_window_without_a_tag(store):
    first = plan_evaluation(store, "plant_c", set(), None)
    assert (first["reference"], first["unprocessed"]) == (_names(1, 2, 3), _names(4, 5))
    later = plan_evaluation(store, "plant_c", set(_names(4)), Champion("m", "1", None))
    assert (later["reference"], later["unprocessed"]) == (_names(1, 2, 3, 4), _names(5))
    done = plan_evaluation(store, "plant_c", set(_names(4, 5)), None)
    assert done["unprocessed"] == []


@pytest.mark.parametrize(
    ("window", "words"),
    [("batch-000001-batch-000003", ["not a batch name"]), ("batch-000003:batch-000001", ["ends before"]),
     ("batch-000004:batch-000009", ["does not have", "batch-000006"]), ("a:b:c", ["batch-NNNNNN"])],
)
def test_a_bad_data_window_names_site_tag_and_problem(store, window, words):
    with pytest.raises(SiteDataError) as err:
        plan_evaluation(store, "plant_c", set(), Champion("plant_c-axis_failures-federated", "7", window))
    message = str(err.value)
    assert "plant_c" in message and "mledge.data_window.plant_c" in message and "version 7" in message
    for word in words:
        assert word in message, message


def test_without_a_champion_concept_drift_is_skipped_and_data_drift_still_runs(store, tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    alerts, tracker = AlertStore(url), ProcessedBatches(url)
    tracker.mark("plant_c", _names(4))  # evaluated earlier: batch 5 waits, batches 1-4 are the reference
    simulated = simulate(store, "plant_c", tracker.processed("plant_c"), None)
    assert "no production model" in simulated["concept_skipped"]
    # Only the label rate and the sufficiency checks, against the reference's failure rate: no directional test.
    assert not any(simulated["concept"]["batch-000005"]["computable"].values())
    assert simulated["reference"] == _names(1, 2, 3, 4)
    evaluated = evaluate(store, "plant_c")
    assert set(evaluated["units"]) == set(_names(5))
    assert evaluated["units"]["batch-000005"]["concept"] is None
    assert evaluated["units"]["batch-000005"]["label_rate_share"] is not None  # against the reference rate
    result = decide(store, "plant_c", alerts, tracker, n_sites=3, publish=None)
    (alert,) = result["alerts"]
    assert (alert["kind"], alert["batch"], alert["site"]) == ("data", "batch-000005", "plant_c")
    assert result["concept_skipped"] == simulated["concept_skipped"] and result["concept_drift"] is False
    assert alert["report_uri"].endswith("data_drift.html")
    assert alert["details"]["reference"] == _names(1, 2, 3, 4)
    assert set(alert["details"]["columns"]) == {"type", "air_temperature_k", "process_temperature_k",
                                                "rotational_speed_rpm", "torque_nm", "tool_wear_min"}
    assert tracker.processed("plant_c") == set(_names(4, 5))
    # The workspace was archived, reports included; a second decide finds nothing to do.
    assert read_plan(store) is None and not workspace(store).exists()
    archived = store / "drift" / "evaluations" / simulated["evaluation_id"]
    assert (archived / "batch-000005" / "data_drift.html").exists()
    assert decide(store, "plant_c", alerts, tracker, publish=None)["alerts"] == []
    assert plan_evaluation(store, "plant_c", tracker.processed("plant_c"), None)["unprocessed"] == []


def test_steps_out_of_order_say_what_to_run(store, tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    alerts, tracker = AlertStore(url), ProcessedBatches(url)
    assert evaluate(store, "plant_c")["batches"] == {}  # nothing planned: nothing to do, not an error
    assert decide(store, "plant_c", alerts, tracker, publish=None)["drift"] is False
    simulate(store, "plant_c", set(), None)
    with pytest.raises(SiteDataError, match="mledge drift p-value"):
        decide(store, "plant_c", alerts, tracker, publish=None)
    assert tracker.processed("plant_c") == set() and alerts.list() == []
    # A new simulate keeps the abandoned workspace instead of continuing it.
    first = read_plan(store)["evaluation_id"]
    simulate(store, "plant_c", set(), None)
    assert read_plan(store)["evaluation_id"] != first
    kept = store / "drift" / "evaluations" / f"{first}-superseded" / "plan.json"
    assert json.loads(kept.read_text())["evaluation_id"] == first


def _put(store, name, frame):
    frame.to_csv(store / "batches" / f"{name}.csv", index=False)


def test_small_batches_are_pooled_and_the_rest_waits_unprocessed(tmp_path, plant_b_model):
    """Batches too small to decide are pooled in order until the pool is large enough; a pool still too small
    waits, unmarked, and is pooled again with the next batch at the next evaluation."""
    store = tmp_path / "sites" / "plant_b"
    for _ in range(3):
        append_generated_batch(store, SITES["plant_b"], rows=1000)
    # 60-row batches are too small on their own (MIN_ROWS); a 500-row batch makes any pool large enough.
    sizes = {4: 60, 5: 60, 6: 60, 7: 500, 8: 60, 9: 500}
    state = None
    frames = {}
    for index in range(1, 10):
        frames[index], state = generate_batch(SITES["plant_b"], index, state, rows=sizes.get(index, 1000), drifts=())
    for index in range(4, 9):
        _put(store, f"batch-{index:06d}", frames[index])
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    alerts, tracker = AlertStore(url), ProcessedBatches(url)
    champion = Champion("global-axis_failures-federated", "1", "batch-000001:batch-000003")
    planned = simulate(store, "plant_b", set(), champion, load_model=lambda _: plant_b_model, simulations=500)
    assert [(u["name"], u["status"]) for u in planned["units"]] == [
        ("batch-000004:batch-000007", "measured"), ("batch-000008", "insufficient_data")]
    assert f"60 rows < {MIN_ROWS}" in planned["units"][1]["reason"]
    assert planned["concept"]["batch-000004:batch-000007"]["current_rows"] == 680
    evaluate(store, "plant_b")
    result = decide(store, "plant_b", alerts, tracker, n_sites=3)
    assert result["waiting"] == [{"unit": "batch-000008", "batches": ["batch-000008"],
                                  "reason": planned["units"][1]["reason"]}]
    assert tracker.processed("plant_b") == set(_names(4, 5, 6, 7))  # the waiting batch is not marked
    assert {a["batch"] for a in result["alerts"]} == {"batch-000004:batch-000007"}
    assert not any(a["decision"] == "drift" for a in alerts.list())
    # The next batch arrives: the waiting one is pooled with it and decided.
    _put(store, "batch-000009", frames[9])
    again = simulate(store, "plant_b", tracker.processed("plant_b"), champion, load_model=lambda _: plant_b_model,
                     simulations=500)
    assert [(u["name"], u["status"]) for u in again["units"]] == [("batch-000008:batch-000009", "measured")]
    evaluate(store, "plant_b")
    decide(store, "plant_b", alerts, tracker, n_sites=3)
    assert tracker.processed("plant_b") == set(_names(4, 5, 6, 7, 8, 9))


def test_an_empty_batch_is_a_label_rate_finding_and_blocks_nothing(store, tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    alerts, tracker = AlertStore(url), ProcessedBatches(url)
    pd.DataFrame(columns=list(COLUMNS)).to_csv(store / "batches" / "batch-000006.csv", index=False)
    frame, _ = generate_batch(SITES["plant_c"], 7, None, rows=2000, drifts=())
    _put(store, "batch-000007", frame[frame[LABEL] == 0])  # its failure rows were lost on the way
    planned = simulate(store, "plant_c", set(), None)
    assert [(u["name"], u["status"]) for u in planned["units"]] == [
        ("batch-000004", "measured"), ("batch-000005", "measured"), ("batch-000006", "empty"),
        ("batch-000007", "measured")]
    evaluate(store, "plant_c")
    result = decide(store, "plant_c", alerts, tracker, n_sites=3)
    findings = {(a["batch"], a["kind"], a["decision"], a["status"]) for a in result["alerts"]}
    assert ("batch-000006", "label_rate", "anomaly", "new") in findings
    assert ("batch-000007", "label_rate", "anomaly", "new") in findings
    assert result["label_rate_anomaly"] and not result["concept_drift"] and result["drift"] is False
    assert tracker.processed("plant_c") == set(_names(4, 5, 6, 7))


def test_a_small_batch_that_lost_its_labels_is_decided_at_once(tmp_path, plant_b_model, plant_b_stream):
    """Too few rows for the drift tests, but far fewer failures than its scores imply: a label-rate finding now
    (pooling it with the next batch would dilute the loss), with no data or concept test run on it."""
    store = tmp_path / "sites" / "plant_b"
    for _ in range(3):
        append_generated_batch(store, SITES["plant_b"], rows=1000)
    batch = plant_b_stream[3]
    # 150 rows, most of them failures the export recorded as fine.
    rows = pd.concat([batch[batch[LABEL] == 1], batch[batch[LABEL] == 0]]).head(150).copy()
    failed = rows[LABEL] == 1
    assert failed.sum() >= 20 and len(rows) < MIN_ROWS
    rows.loc[:, ["twf", "hdf", "pwf", "osf", "rnf", LABEL]] = 0
    _put(store, "batch-000004", rows.sort_values("udi"))
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    alerts, tracker = AlertStore(url), ProcessedBatches(url)
    champion = Champion("global-axis_failures-federated", "1", "batch-000001:batch-000003")
    planned = simulate(store, "plant_b", set(), champion, load_model=lambda _: plant_b_model)
    assert [(u["name"], u["status"]) for u in planned["units"]] == [("batch-000004", "labels_lost")]
    evaluate(store, "plant_b")
    result = decide(store, "plant_b", alerts, tracker, n_sites=3)
    assert [(a["kind"], a["decision"]) for a in result["alerts"]] == [("label_rate", "anomaly")]
    assert result["waiting"] == [] and result["drift"] is False
    assert tracker.processed("plant_b") == {"batch-000004"}


def test_the_track_record_joins_the_concept_reference(store):
    champion = Champion("plant_c-axis_failures-federated", "2", "batch-000001:batch-000002")
    plan = plan_evaluation(store, "plant_c", set(_names(3, 4)), champion, calibration=_names(1, 3, 4, 9))
    # Only batches after the window that the site has and that are not waiting themselves.
    assert plan["calibration"] == _names(3, 4) and plan["unprocessed"] == _names(5)
    assert plan_evaluation(store, "plant_c", set(), None, calibration=_names(4))["calibration"] == []
