"""Every DAG in dags/ imports without errors, within Airflow's 1 s import timeout, and without heavy imports."""

import copy
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import DAGS, REPO

from mledge import contracts

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
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        # Of the workload's own code only the stdlib-only contracts module may be imported.
        "workload = [m for m in sys.modules if m.startswith('mledge.') and m != 'mledge.contracts']\n"
        "print(json.dumps(sorted(heavy + workload)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_parse_time_of_every_dag_file_is_reported(dagbag, capsys):
    """What each file costs the dag-processor, from the DagBag's own per-file statistics (reported, not asserted:
    a shared machine's timing proves nothing; Airflow's import timeout above is the hard limit)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))  # the second bag of this module: shared imports are warm, as when the
    assert bag.import_errors == {}      # dag-processor re-parses a file
    stats = {Path(s.file).name: s for s in bag.dagbag_stats}
    assert sorted(stats) == sorted(p.name for p in DAGS.glob("*.py"))
    with capsys.disabled():
        print("\nDAG file parse times (DagBag.dagbag_stats):")
        for name, stat in sorted(stats.items()):
            seconds = stat.duration / timedelta(seconds=1)
            print(f"  {name:32} {seconds:.3f} s  {stat.dag_num} DAG, {stat.task_num} tasks")


def test_federated_training_shape(dagbag):
    dag = dagbag.dags["federated_training"]
    order = ["migrate_platform_db", "wait_for_supernodes", "start_flower_run", "await_flower_run", "publish_run",
             "register_and_promote"]
    assert sorted(dag.task_ids) == sorted([*order, "record_training_cost"])
    assert dag.get_task("migrate_platform_db").upstream_task_ids == set()
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("record_training_cost").upstream_task_ids == {"publish_run"}
    # Every task may be retried: a retry finds the Flower run, the outbox and the versions its try made.
    assert all(task.retries >= 2 for task in dag.tasks)
    assert "--dag-run-id" in dag.get_task("await_flower_run").arguments
    assert dag.get_task("migrate_platform_db").arguments == ["db", "migrate"]
    assert dag.params["min_clients"] == 3
    assert dag.max_active_runs == 1
    assert dag.catchup is False


def _schema(dag, name: str) -> dict:
    return dag.params.get_param(name).schema


def test_federated_training_params_come_from_the_contracts(dagbag):
    dag = dagbag.dags["federated_training"]
    strategy = _schema(dag, "strategy")
    assert strategy["enum"] == list(contracts.STRATEGIES)
    assert strategy["values_display"] == contracts.STRATEGIES
    assert dag.params["strategy"] == contracts.DEFAULT_STRATEGY
    family = _schema(dag, "model_family")
    assert family["enum"] == list(contracts.MODEL_FAMILIES) == ["mlp", "xgboost"]
    assert dag.params["model_family"] == contracts.DEFAULT_MODEL_FAMILY
    assert _schema(dag, "attack_site")["enum"] == ["", *contracts.SITES]
    assert dag.params["attack_site"] == ""
    defaults = {"min_clients": contracts.MIN_CLIENTS, "node_wait_timeout_s": contracts.NODE_WAIT_TIMEOUT_S,
                "rounds": contracts.ROUNDS, "local_epochs": contracts.LOCAL_EPOCHS,
                "learning_rate": contracts.LEARNING_RATE, "run_timeout_s": contracts.RUN_TIMEOUT_S}
    assert {name: dag.params[name] for name in defaults} == defaults
    # Every integer knob is bounded on both sides: a typo cannot ask for a week of waiting.
    for name in ("min_clients", "node_wait_timeout_s", "rounds", "local_epochs", "run_timeout_s"):
        schema = _schema(dag, name)
        assert schema["minimum"] <= dag.params[name] <= schema["maximum"], name
    assert (_schema(dag, "node_wait_timeout_s")["maximum"], _schema(dag, "run_timeout_s")["maximum"]) == (3600, 86400)


def test_a_strategy_or_site_outside_the_enum_is_refused(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["federated_training"]
    strategy, attack_site = (copy.copy(dag.params.get_param(n)) for n in ("strategy", "attack_site"))
    assert strategy.resolve("fedqv-reputation") == "fedqv-reputation"
    assert attack_site.resolve("plant_c") == "plant_c"
    with pytest.raises(ParamValidationError):
        strategy.resolve("fedprox")
    with pytest.raises(ParamValidationError):
        attack_site.resolve("plant_z")


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
    """The steps of the seed documents' concept-drift process, per site in a task group named after it: what reads
    the site's store runs on the site's edge worker, what reads the platform database at the platform."""
    from mledge.contracts import SITE_EXECUTOR

    dag = dagbag.dags["concept_drift_evaluation"]
    at_site = {"check_unprocessed", "generate_simulations", "evaluate_p_value", "measurements", "publish_decision"}
    at_platform = {"state", "determine_conceptdrift", "fl_train"}
    edges = {
        "state": {"edge_worker"},
        "edge_worker": {"check_unprocessed"},
        "check_unprocessed": {"generate_simulations", "skip_generate_simulations"},
        "generate_simulations": {"evaluate_p_value"},
        "skip_generate_simulations": {"evaluate_p_value"},
        "evaluate_p_value": {"measurements"},
        "measurements": {"determine_conceptdrift"},
        "determine_conceptdrift": {"fl_train", "skip_training", "publish_decision"},
    }
    for site in contracts.SITES:
        g = f"{site}."
        for task, downstream in edges.items():
            assert dag.get_task(g + task).downstream_task_ids == {g + d for d in downstream}
        for task in at_site:
            assert (dag.get_task(g + task).queue, dag.get_task(g + task).executor) == (site, SITE_EXECUTOR), task
        for task in at_platform:
            assert dag.get_task(g + task).queue != site and dag.get_task(g + task).executor != SITE_EXECUTOR, task
        assert dag.get_task(g + "state").upstream_task_ids == {"migrate_platform_db"}
        # Each site step hears of the platform only through its sibling's XCom, never another site's.
        assert f"'{site}.state'" in " ".join(dag.get_task(g + "check_unprocessed").arguments)
        assert f"'{site}.measurements'" in " ".join(dag.get_task(g + "determine_conceptdrift").arguments)
        assert [a.uri for a in dag.get_task(g + "fl_train").outlets] == ["mledge://axis_failures/drift"]
        assert dag.get_task(g + "evaluate_p_value").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("migrate_platform_db").arguments == ["db", "migrate"]
    assert dag.get_task("migrate_platform_db").upstream_task_ids == set()
    for task_id in dag.task_ids:
        if task_id != "migrate_platform_db":
            assert "migrate_platform_db" in {t.task_id for t in dag.get_task(task_id).get_flat_relatives(upstream=True)}
    assert dag.params["retraining"] in contracts.RETRAINING_MODES
    assert _schema(dag, "retraining")["enum"] == list(contracts.RETRAINING_MODES)
    simulations = _schema(dag, "simulations")
    assert dag.params["simulations"] == contracts.DRIFT_SIMULATIONS
    assert (simulations["minimum"], simulations["maximum"]) == (
        contracts.MIN_DRIFT_SIMULATIONS, contracts.MAX_DRIFT_SIMULATIONS)
    assert dag.catchup is False


def test_data_collection_shape(dagbag):
    dag = dagbag.dags["data_collection"]
    assert dag.catchup is False and dag.schedule is not None
    for site in contracts.SITES:  # each site's collection runs at the site, on its own edge worker's queue
        collect = dag.get_task(f"{site}.collect")
        assert (collect.queue, collect.executor) == (site, contracts.SITE_EXECUTOR)
        assert collect.downstream_task_ids == {"check_quarantine"}
        assert dag.get_task(f"{site}.edge_worker").downstream_task_ids == {f"{site}.collect"}
        assert dag.get_task(f"{site}.edge_worker").mode == "reschedule"  # holds no worker slot while it waits
    assert dag.get_task("check_quarantine").queue == "default" and dag.get_task("check_quarantine").trigger_rule == (
        "all_done"
    )
    assert dag.params["rows"] == contracts.ROWS_PER_BATCH
    assert _schema(dag, "rows")["minimum"] <= contracts.ROWS_PER_BATCH <= _schema(dag, "rows")["maximum"]


def test_arguments_are_templated_with_params_and_the_run_id(dagbag):
    dag = dagbag.dags["federated_training"]
    start = dag.get_task("start_flower_run")
    assert "arguments" in start.template_fields
    assert "{{ run_id }}" in start.arguments
    assert "{{ params.rounds }}" in start.arguments
    assert start.arguments[start.arguments.index("--model-family") + 1] == "{{ params.model_family }}"
