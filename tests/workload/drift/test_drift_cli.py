"""``mledge drift ...`` end to end on a temporary MLEDGE_HOME with a real local MLflow (SQLite) and champion.

plant_b's process-temperature sensor reads 4 K high from batch 5 (a schedule of this test's own: the CLI's path is
tested here, how small a change is found is the benchmark's business, bench/drift.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from drift_streams import trained_model

from drift.alerts import AlertError
from fl.protocol import WHAT_LEAVES_A_SITE, declared
from mledge.cli import build_parser
from mledge.contracts import CHAMPION, GLOBAL_MODEL
from mledge.onsite.data_drift import COLUMN_METHODS
from mledge.onsite.schema import N_FEATURES
from mledge.onsite.store import load_site_data
from mledge.ops.settings import Settings

ROWS = 1000
OFFSET = {"drifts": [{"site": "plant_b", "onset_batch": 5, "kind": "sensor_offset", "offset_k": 4.0}]}


def run(*argv: str, group: str = "drift"):
    """One command through mledge's own parser, as the program runs it (without the process around it)."""
    args = build_parser().parse_args([group, *argv])
    result = args.func(args, Settings())
    json.dumps(result, default=str)  # what mledge prints: it must be JSON
    return result


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Four collected batches per site, a global champion trained on batches 1-4, then batch 5 collected."""
    root = tmp_path_factory.mktemp("mledge-home")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLEDGE_HOME", str(root))
        mp.delenv("MLEDGE_PLATFORM_DB_URL", raising=False)
        (root / "schedule.json").write_text(json.dumps(OFFSET))
        mp.setenv("MLEDGE_DRIFT_SCHEDULE", str(root / "schedule.json"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            for _ in range(4):
                run("collect", "--rows", str(ROWS))
            settings = Settings()
            for site in settings.sites:  # artifacts under the test's folder, not the working directory
                mlflow.create_experiment(f"drift-{site}-axis_failures", artifact_location=(root / site).as_uri())
            experiment = mlflow.create_experiment("training", artifact_location=(root / "models").as_uri())
            reference = load_site_data(settings.site_store("plant_b"), "plant_b")
            with mlflow.start_run(experiment_id=experiment):
                info = mlflow.pytorch.log_model(
                    trained_model(reference, epochs=4), name="model",
                    input_example=np.zeros((2, N_FEATURES), np.float32), pip_requirements=["torch==2.13.0"],
                )
            version = mlflow.register_model(info.model_uri, GLOBAL_MODEL)
            client = mlflow.MlflowClient()
            client.set_registered_model_alias(GLOBAL_MODEL, CHAMPION, version.version)
            for site in ("plant_a", "plant_b"):
                client.set_model_version_tag(GLOBAL_MODEL, version.version, f"mledge.data_window.{site}",
                                             "batch-000001:batch-000004")
            collected = run("collect", "--rows", str(ROWS))
            yield {"root": root, "settings": settings, "version": str(version.version), "collected": collected}
        finally:
            mlflow.set_tracking_uri(None)


def test_sites_and_collect(home):
    assert run("sites") == ["plant_a", "plant_b", "plant_c"]
    collected = home["collected"]
    assert collected["accepted"] == 3 and collected["quarantined"] == 0
    assert collected["sites"]["plant_b"]["accepted"][0]["batch"] == "batch-000005.csv"


def test_accept_quarantines_a_bad_file_and_says_why(home):
    incoming = home["settings"].site_store("plant_c") / "incoming"
    incoming.mkdir(exist_ok=True)
    (incoming / "manual.csv").write_text("udi,type\n1,L\n")
    result = run("accept", "--site", "plant_c")
    assert result["accepted"] == []
    assert result["quarantined"][0]["file"] == "manual.csv" and "missing columns" in result["quarantined"][0]["reason"]
    assert (home["settings"].site_store("plant_c") / "quarantine" / "manual.csv.reason.json").exists()


def test_unknown_site_is_named(home):
    with pytest.raises(ValueError, match="unknown site 'plant_x'.*plant_a"):
        run("check-unprocessed", "--site", "plant_x")


@pytest.fixture(scope="module")
def plant_b_evaluation(home):
    tables = run("migrate", group="db")
    check = run("check-unprocessed", "--site", "plant_b")
    simulated = run("simulate", "--site", "plant_b", "--simulations", "1000")
    p_values = run("p-value", "--site", "plant_b")
    decided = run("decide", "--site", "plant_b")
    return {"tables": tables, "check": check, "simulated": simulated, "p_values": p_values, "decided": decided}


def test_db_migrate(plant_b_evaluation):
    assert {"drift_alerts", "drift_processed_batches"} <= set(plant_b_evaluation["tables"]["tables"])


def test_check_unprocessed_uses_the_champions_window(home, plant_b_evaluation):
    check = plant_b_evaluation["check"]
    assert check["site"] == "plant_b"
    assert check["unprocessed"] == ["batch-000005"]
    assert check["reference"] == [f"batch-00000{i}" for i in (1, 2, 3, 4)]
    assert check["champion"]["name"] == GLOBAL_MODEL and check["champion"]["version"] == home["version"]


def test_simulate_and_p_value_report_per_batch(plant_b_evaluation):
    simulated = plant_b_evaluation["simulated"]
    assert simulated["concept_skipped"] is None
    assert simulated["concept"]["batch-000005"]["simulations"] == 1000
    assert simulated["units"] == [{"name": "batch-000005", "batches": ["batch-000005"], "status": "measured"}]
    unit = plant_b_evaluation["p_values"]["units"]["batch-000005"]
    assert unit["status"] == "measured" and set(unit["data"]) == set(COLUMN_METHODS)
    assert set(unit["concept"]) == {"false_negatives", "false_positives"}
    assert all(0 < p <= 1 for p in unit["concept"].values())
    assert 0.5 < unit["label_rate_share"] < 2.0


def test_decide_finds_the_sensor_offset_at_plant_b(plant_b_evaluation):
    decided = plant_b_evaluation["decided"]
    assert decided["drift"] is True and decided["concept_drift"] is True
    concept = next(a for a in decided["alerts"] if a["kind"] == "concept")
    assert (concept["site"], concept["batch"], concept["decision"], concept["status"]) == (
        "plant_b", "batch-000005", "drift", "new")
    # The sensor reads high: the model misses overheating failures it would have caught.
    assert concept["details"]["drifted_tests"] == ["false_negatives"] and concept["p_value"] <= 0.05
    assert {a["kind"] for a in decided["alerts"]} == {"data", "concept"}
    data = next(a for a in decided["alerts"] if a["kind"] == "data")
    # The decision and its metrics reached MLflow, in the site's experiment.
    report = Path(urlparse(data["report_uri"]).path)
    assert report.name == "data_drift.html"  # where it lives (MLflow, or the site) is the publisher's business
    run_ = mlflow.get_run(data["details"]["mlflow_run_id"])
    assert run_.data.tags["mledge.batch"] == "batch-000005" and run_.data.tags["mledge.drift"] == "true"
    assert mlflow.get_experiment(run_.info.experiment_id).name == "drift-plant_b-axis_failures"
    assert {"concept_false_negatives_p_value", "data_adjusted_p_value.process_temperature_k"} <= set(run_.data.metrics)


def test_decide_again_and_check_again_find_nothing(plant_b_evaluation):
    assert run("decide", "--site", "plant_b")["alerts"] == []
    assert run("check-unprocessed", "--site", "plant_b")["unprocessed"] == []


def test_plant_a_stays_clean(home, plant_b_evaluation):
    run("simulate", "--site", "plant_a", "--simulations", "500")
    run("p-value", "--site", "plant_a")
    decided = run("decide", "--site", "plant_a")
    assert decided["drift"] is False
    assert {(a["kind"], a["status"], a["updated_by"]) for a in decided["alerts"]} == {
        ("data", "resolved", "system"), ("concept", "resolved", "system")}


def test_alerts_and_review(plant_b_evaluation):
    listed = run("alerts", "--json")
    assert {a["site"] for a in listed} >= {"plant_b"}
    new = run("alerts", "--site", "plant_b", "--status", "new")
    assert new and all(a["status"] == "new" and a["site"] == "plant_b" for a in new)
    target = next(a for a in new if a["kind"] == "concept")
    approved = run("review", "--alert-id", str(target["id"]), "--action", "approve", "--user", "alice",
                   "--note", "sensor replaced")
    assert (approved["status"], approved["updated_by"], approved["note"]) == ("retraining", "alice", "sensor replaced")
    with pytest.raises(AlertError, match="cannot become 'acknowledged'"):
        run("review", "--alert-id", str(target["id"]), "--action", "acknowledge", "--user", "bob")
    assert run("alerts", "--status", "retraining") == [approved]
    with pytest.raises(SystemExit):
        run("review", "--alert-id", "1", "--action", "delete", "--user", "x")


def test_collected_batches_are_readable(home):
    frame = load_site_data(home["settings"].site_store("plant_b"), "plant_b")
    assert len(frame) == 5 * ROWS and isinstance(frame, pd.DataFrame)


def test_the_site_steps_run_without_the_platform_database_and_only_statistics_cross(home, monkeypatch):
    """The DAG's split: the platform tells the site its state, the site measures, the platform decides, the site
    publishes. The site steps never open the platform database, and what they hand over holds no row."""
    # A batch of its own (earlier tests may have evaluated plant_a's batches already).
    accepted = run("collect", "--site", "plant_a", "--rows", str(ROWS))["sites"]["plant_a"]["accepted"]
    new = accepted[0]["batch"].removesuffix(".csv")
    state = run("state", "--site", "plant_a")
    assert state["site"] == "plant_a" and state["champion"]["version"] == home["version"]
    assert new not in state["processed"]

    platform_db = Settings().platform_db_url
    with monkeypatch.context() as site:  # at the site: no platform database to read
        site.setenv("MLEDGE_PLATFORM_DB_URL", f"sqlite:///{home['root'] / 'not-here' / 'platform.db'}")
        given = json.dumps(state)
        check = run("check-unprocessed", "--site", "plant_a", "--state", given)
        assert new in check["unprocessed"]
        simulated = run("simulate", "--site", "plant_a", "--simulations", "200", "--state", given)
        p_values = run("p-value", "--site", "plant_a")
        answers = {"check_unprocessed": check, "generate_simulations": simulated, "evaluate_p_value": p_values}
        measured = run("measurements", "--site", "plant_a", "--state", given)
        assert not (home["root"] / "not-here").exists()
    for task, answer in {**answers, "measurements": measured}.items():  # what crosses is what README declares
        channel = next(d.channel for d in WHAT_LEAVES_A_SITE if d.channel.startswith(f"Airflow task `<site>.{task}`"))
        assert set(answer) <= declared(channel, "result"), (task, set(answer) - declared(channel, "result"))
    handed_over = json.dumps(measured, default=str)
    batch = pd.read_csv(home["settings"].site_store("plant_a") / "batches" / f"{new}.csv")
    readings = batch[["air_temperature_k", "process_temperature_k", "rotational_speed_rpm", "torque_nm"]]
    for row in readings.head(50).itertuples(index=False):
        assert not all(repr(float(v)) in handed_over for v in row), row  # no reading tuple of a row crossed

    decided = run("decide", "--site", "plant_a", "--measurements", handed_over)
    assert decided["site"] == "plant_a" and any(new in unit["batches"] for unit in decided["batches"].values())
    assert new in run("state", "--site", "plant_a")["processed"]
    assert Settings().platform_db_url == platform_db
    with pytest.raises(ValueError, match="of site 'plant_a', not 'plant_c'"):
        run("decide", "--site", "plant_c", "--measurements", handed_over)

    published = run("publish", "--site", "plant_a", "--decision", json.dumps(decided, default=str))
    assert published["archived"] and set(published["published"]) == {u["batch"] for u in decided["publish"]}
    reports = [a["report_uri"] for a in run("alerts", "--site", "plant_a") if new in a["batch"] and a["report_uri"]]
    assert reports and all(Path(r).is_file() for r in reports), reports  # where the archive put them, at the site
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("drift-plant_a-axis_failures")
    logged = []
    for found in client.search_runs([experiment.experiment_id]):
        for folder in client.list_artifacts(found.info.run_id):
            logged += [a.path for a in client.list_artifacts(found.info.run_id, folder.path)] if folder.is_dir else [
                folder.path]
    assert logged and all(path.startswith("decision/") for path in logged), logged  # the reports stayed at the site
    assert not any(path.endswith((".html", ".json")) and "report" in path for path in logged)
