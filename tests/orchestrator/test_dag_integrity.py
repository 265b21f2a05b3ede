"""Every DAG in dags/ imports without errors, within Airflow's 1 s import timeout, and without heavy imports."""

import json
import subprocess
import sys

import pytest
from conftest import DAGS, REPO

HEAVY = ("torch", "flwr", "mlflow", "pandas", "sklearn", "evidently", "fl", "drift", "costs", "boto3")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_imports_within_the_timeout(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found in dags/"


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_dag_file_has_no_heavy_imports(path):
    """A DAG file is parsed over and over by the dag-processor: the workload's libraries stay out of it."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_federated_training_shape(dagbag):
    dag = dagbag.dags["federated_training"]
    order = ["wait_for_supernodes", "start_flower_run", "await_flower_run", "register_and_promote"]
    assert sorted(dag.task_ids) == sorted([*order, "record_training_cost"])
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("record_training_cost").upstream_task_ids == {"await_flower_run"}
    assert dag.params["min_clients"] == 3
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def _asset_uris(condition) -> list[str]:
    return [getattr(o, "uri", None) for o in condition.objects]


def test_training_is_scheduled_on_the_drift_asset(dagbag):
    dag = dagbag.dags["federated_training"]
    assert _asset_uris(dag.timetable.asset_condition) == ["mledge://axis_failures/drift"]


def test_a_cron_schedule_adds_to_the_asset_schedule(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MLEDGE_TRAINING_SCHEDULE", "0 3 * * *")
    dag = DagBag(dag_folder=str(DAGS / "federated_training.py")).dags["federated_training"]
    assert dag.timetable.timetable._expression == "0 3 * * *"
    assert _asset_uris(dag.timetable.asset_condition) == ["mledge://axis_failures/drift"]


def test_concept_drift_evaluation_shape(dagbag):
    """The steps of the seed documents' concept-drift process, per site in a mapped task group."""
    dag = dagbag.dags["concept_drift_evaluation"]
    g = "site."
    edges = {
        "create_table": {"check_unprocessed"},
        "check_unprocessed": {"generate_simulations", "skip_generate_simulations"},
        "generate_simulations": {"evaluate_p_value"},
        "skip_generate_simulations": {"evaluate_p_value"},
        "evaluate_p_value": {"determine_conceptdrift"},
        "determine_conceptdrift": {"fl_train", "skip_training"},
    }
    for task, downstream in edges.items():
        assert dag.get_task(g + task).downstream_task_ids == {g + d for d in downstream}
    assert dag.get_task(g + "evaluate_p_value").trigger_rule == "none_failed_min_one_success"
    assert [a.uri for a in dag.get_task(g + "fl_train").outlets] == ["mledge://axis_failures/drift"]
    assert type(dag.task_group_dict["site"]).__name__ == "MappedTaskGroup"
    assert dag.params["retraining"] in ("auto", "approval")
    assert dag.catchup is False


def test_data_collection_shape(dagbag):
    dag = dagbag.dags["data_collection"]
    assert dag.catchup is False and dag.schedule is not None
    assert dag.get_task("collect").downstream_task_ids == {"check_quarantine"}


def test_arguments_are_templated_with_params_and_the_run_id(dagbag):
    dag = dagbag.dags["federated_training"]
    start = dag.get_task("start_flower_run")
    assert "arguments" in start.template_fields
    assert "{{ run_id }}" in start.arguments
    assert "{{ params.rounds }}" in start.arguments
