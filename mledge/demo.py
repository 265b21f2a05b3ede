"""``mledge demo``: start the local stack, run ``federated_training`` through Airflow's REST API (as clicking
Trigger in the UI would), and print what happened. The stack keeps running afterwards; ``make down`` stops it.
"""

from __future__ import annotations

import time
from typing import Any

from mledge import stack
from mledge.airflow_api import AirflowClient, password_for
from mledge.cli import init_site_data
from mledge.settings import Settings

DAG_ID = "federated_training"


def trigger_training(settings: Settings, conf: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Trigger federated_training as the local admin and wait for the run's end; returns the run's facts."""
    client = AirflowClient(
        settings.airflow_url, "admin", password_for(stack.airflow_passwords_file(settings), "admin")
    )
    client.wait_for_dag(DAG_ID)
    client.unpause(DAG_ID)
    run_id = client.trigger(DAG_ID, conf)
    print(f"triggered {DAG_ID} run {run_id}; waiting (follow it at {settings.airflow_url}/dags/{DAG_ID})")
    run = client.wait_for_run(DAG_ID, run_id, timeout)
    tasks = {t["task_id"]: t["state"] for t in client.task_instances(DAG_ID, run_id)}
    facts: dict[str, Any] = {"dag_run_id": run_id, "state": run["state"], "tasks": tasks}
    for task, key in (("start_flower_run", "flower"), ("await_flower_run", "flower_result"),
                      ("register_and_promote", "promotion")):
        if tasks.get(task) == "success":
            facts[key] = client.xcom(DAG_ID, run_id, task)
    return facts


def round_metrics(mlflow_run_id: str) -> dict[int, dict[str, float]]:
    import mlflow

    client = mlflow.MlflowClient()
    by_round: dict[int, dict[str, float]] = {}
    for name in ("train_loss", "eval_loss", "eval_accuracy", "eval_recall", "eval_f1"):
        for point in client.get_metric_history(mlflow_run_id, name):
            by_round.setdefault(point.step, {})[name] = point.value
    return dict(sorted(by_round.items()))


def mlflow_run_url(settings: Settings, run_id: str) -> str:
    import mlflow

    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    return f"{settings.mlflow_uri}/#/experiments/{experiment}/runs/{run_id}"


def print_summary(settings: Settings, facts: dict[str, Any]) -> None:
    from mledge.status import registered_models

    print()
    print(f"DAG run      {facts['dag_run_id']}: {facts['state']}")
    for task, state in facts["tasks"].items():
        print(f"  task {task:<24} {state}")
    flower = facts.get("flower") or {}
    result = facts.get("flower_result") or {}
    print(f"Flower run   {flower.get('run_id', '?')}: {result.get('status', '?')}")
    for site, problems in (result.get("site_failures") or {}).items():
        for problem in problems:
            print(f"  site {site} failed: {problem}")
    if result.get("mlflow_run_id"):
        print(f"MLflow run   {mlflow_run_url(settings, result['mlflow_run_id'])}")
        print("  round  train_loss  eval_loss  accuracy  recall(failure)  f1(failure)")
        for rnd, m in round_metrics(result["mlflow_run_id"]).items():
            print(
                f"  {rnd:>5}  {m.get('train_loss', float('nan')):10.4f}  {m.get('eval_loss', float('nan')):9.4f}"
                f"  {m.get('eval_accuracy', float('nan')):8.4f}  {m.get('eval_recall', float('nan')):15.4f}"
                f"  {m.get('eval_f1', float('nan')):11.4f}"
            )
    promotion = facts.get("promotion") or {}
    if promotion:
        print(f"Promotion    version {promotion['version']} -> {promotion['alias']}: {promotion['reason']}")
    for model in registered_models():
        print(f"Model        {model['name']}  aliases {model['aliases']}")
        for v in model["versions"]:
            print(f"  version {v['version']:>3}  {','.join(v['aliases']) or '-':<12} flower run {v['flower_run_id']}")
    print()
    print(f"Airflow UI   {settings.airflow_url}  (user admin, password in {stack.airflow_passwords_file(settings)})")
    print(f"MLflow UI    {settings.mlflow_uri}")
    print("Stop it all  make down")


def run_attack_demo(settings: Settings, rounds: int, timeout: float, profile: str) -> dict[str, Any]:
    """plant_c poisons its updates; the same run with FedAvg and with FedQV + reputation, side by side."""
    init_site_data(settings, batches=3)
    stack.up(settings, say=print)
    results = {}
    for strategy in ("fedavg", "fedqv-reputation"):
        conf = {"rounds": rounds, "strategy": strategy, "attack_site": "plant_c", "attack_profile": profile}
        results[strategy] = trigger_training(settings, conf, timeout)
    print(f"\nplant_c attacks with: {profile}")
    print("  strategy           dag run state  final accuracy  recall(failure)  f1(failure)  MLflow run")
    for strategy, facts in results.items():
        mlflow_run = (facts.get("flower_result") or {}).get("mlflow_run_id")
        final = round_metrics(mlflow_run).get(rounds, {}) if mlflow_run else {}
        print(
            f"  {strategy:<18} {facts['state']:<14} {final.get('eval_accuracy', float('nan')):14.4f}"
            f"  {final.get('eval_recall', float('nan')):15.4f}  {final.get('eval_f1', float('nan')):11.4f}"
            f"  {mlflow_run_url(settings, mlflow_run) if mlflow_run else '-'}"
        )
    return results


def run_demo(settings: Settings, rounds: int, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    init_site_data(settings, batches=3)
    print("starting the local stack (Airflow, MLflow, Flower SuperLink and 3 SuperNodes)")
    stack.up(settings, say=print)
    facts = trigger_training(settings, {"rounds": rounds}, timeout)
    print_summary(settings, facts)
    print(f"demo took {time.monotonic() - started:.0f}s")
    if facts["state"] != "success":
        raise RuntimeError(f"DAG run {facts['dag_run_id']} ended {facts['state']}: {facts['tasks']}")
    return facts
