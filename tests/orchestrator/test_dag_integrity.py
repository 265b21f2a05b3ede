"""Every DAG in dags/ imports without errors, within Airflow's 1 s import timeout, and without heavy imports."""

import json
import subprocess
import sys

import pytest
from conftest import DAGS, REPO

HEAVY = ("torch", "flwr", "mlflow", "pandas", "sklearn", "evidently")


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
    assert sorted(dag.task_ids) == sorted(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.params["min_clients"] == 3
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def test_training_schedule_comes_from_the_environment(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MLEDGE_TRAINING_SCHEDULE", "@daily")
    dag = DagBag(dag_folder=str(DAGS / "federated_training.py")).dags["federated_training"]
    assert dag.schedule == "@daily"


def test_arguments_are_templated_with_params_and_the_run_id(dagbag):
    dag = dagbag.dags["federated_training"]
    start = dag.get_task("start_flower_run")
    assert "arguments" in start.template_fields
    assert "{{ run_id }}" in start.arguments
    assert "{{ params.rounds }}" in start.arguments
