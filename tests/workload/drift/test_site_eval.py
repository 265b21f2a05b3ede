"""The per-site pipeline without MLflow: reference windows, the workspace between steps, no-champion runs."""

from __future__ import annotations

import json

import pytest

from drift.alerts import AlertStore
from drift.decision import decide as decide_at_platform
from drift.tracking import ProcessedBatches
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
from mledge.onsite.profiles import PROFILES as SITES
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
        append_generated_batch(path, SITES["plant_c"], rows=300)
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
    assert "no production model" in simulated["concept_skipped"] and simulated["concept"] == {}
    assert simulated["reference"] == _names(1, 2, 3, 4)
    evaluated = evaluate(store, "plant_c")
    assert set(evaluated["batches"]) == set(_names(5))
    assert evaluated["batches"]["batch-000005"]["concept_p_value"] is None
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
