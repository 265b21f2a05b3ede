"""``mledge demo``: start the local stack, run ``federated_training`` through Airflow's REST API (as clicking
Trigger in the UI would), and print what happened. The stack keeps running afterwards; ``make down`` stops it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mledge.contracts import DEFAULT_PRIVACY, MLP, TAG_PRIVACY
from mledge.ops import stack
from mledge.ops.airflow_api import AirflowClient, password_for
from mledge.ops.components import airflow_passwords_file
from mledge.ops.settings import Settings

DAG_ID = "federated_training"
COLLECTION = "data_collection"
DRIFT = "concept_drift_evaluation"
# Batches every site has before the demo collects more; the default drift schedule shifts plant_b from batch 5.
INITIAL_BATCHES = 3
COLLECTED_BATCHES = 4


def act_as_platform(settings: Settings) -> None:
    """This process reads MLflow as the platform identity (the stack's first start has just made it)."""
    import os

    from mledge.security import mlflow_auth

    if "MLFLOW_TRACKING_USERNAME" not in os.environ:
        os.environ.update(mlflow_auth.client_env(settings, "platform"))


def admin_client(settings: Settings) -> AirflowClient:
    return AirflowClient(settings.airflow_url, "admin", password_for(airflow_passwords_file(settings), "admin"))


def run_dag(client: AirflowClient, dag_id: str, conf: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Trigger a DAG as the local admin (as the UI's Trigger button does) and wait for the run's end."""
    client.wait_for_dag(dag_id)
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, conf)
    print(f"triggered {dag_id} run {run_id}; waiting")
    return finished_run(client, dag_id, run_id, timeout)


def finished_run(client: AirflowClient, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
    run = client.wait_for_run(dag_id, run_id, timeout)
    tasks: dict[str, str] = {}
    for t in client.task_instances(dag_id, run_id):
        name = t["task_id"] + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else "")
        tasks[name] = t["state"]
    return {"dag_id": dag_id, "dag_run_id": run_id, "state": run["state"], "tasks": tasks}


def where_tasks_ran(client: AirflowClient, facts: dict[str, Any], sites: tuple[str, ...]) -> dict[str, list[str]]:
    """Per site, its tasks of the run and the worker that ran each; the platform's tasks under "platform"."""
    ran: dict[str, list[str]] = {}
    for t in client.task_instances(facts["dag_id"], facts["dag_run_id"]):
        if t.get("state") != "success":
            continue
        side = t.get("queue") if t.get("queue") in sites else "platform"
        worker = f"{t.get('hostname') or '?'} ({t.get('executor') or 'default executor'})"
        ran.setdefault(side, []).append(f"{t['task_id']} on {worker}")
    return ran


def print_where_tasks_ran(client: AirflowClient, facts: dict[str, Any], sites: tuple[str, ...]) -> None:
    ran = where_tasks_ran(client, facts, sites)
    for side in (*sites, "platform"):
        for line in ran.get(side, []):
            print(f"  {side:<9} {line}")


def training_facts(client: AirflowClient, facts: dict[str, Any]) -> dict[str, Any]:
    for task, key in (("start_flower_run", "flower"), ("await_flower_run", "flower_result"),
                      ("register_and_promote", "promotion")):
        if facts["tasks"].get(task) == "success":
            facts[key] = client.xcom(DAG_ID, facts["dag_run_id"], task)
    return facts


def trigger_training(settings: Settings, conf: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Trigger federated_training as the local admin and wait for the run's end; returns the run's facts."""
    client = admin_client(settings)
    return training_facts(client, run_dag(client, DAG_ID, conf, timeout))


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


def held_out_line(promotion: dict[str, Any], pooled_f1: float | None) -> str:
    """The registered model's family, its decision threshold and the F1 of the failure class on the sites' held-out
    rows: pooled (from summed counts, the run's final evaluation) and per site (the promotion evidence)."""
    per_site = ", ".join(f"{s} {e['candidate']['f1']:.3f}" for s, e in sorted((promotion.get("holdout") or {}).items()))
    pooled = f"{pooled_f1:.3f}" if pooled_f1 is not None else "?"
    return (f"family {promotion.get('model_family') or '?'}, threshold {promotion.get('threshold') or '?'}: "
            f"held-out F1 {pooled} (per site {per_site})")


def print_summary(settings: Settings, facts: dict[str, Any]) -> None:
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
        print(f"Promotion    {promotion['registered_model']} v{promotion['version']} -> {promotion['alias']}: "
              f"{promotion['reason']}")
        final = list(round_metrics(result["mlflow_run_id"]).values()) if result.get("mlflow_run_id") else []
        print(f"             {held_out_line(promotion, final[-1].get('eval_f1') if final else None)}")
        for m in (promotion.get("site_models") or {}).values():
            print(f"             {m['registered_model']} v{m['version']} -> {m['alias']}: {m['reason']}")
        if promotion.get("drift_alerts"):
            print(f"             triggered by drift alerts {promotion['drift_alerts']}")


def print_models() -> None:
    from mledge.ops.status import registered_models

    for model in registered_models():
        print(f"Model        {model['name']}  aliases {model['aliases']}")
        for v in model["versions"]:
            print(f"  version {v['version']:>3}  {','.join(v['aliases']) or '-':<12} flower run {v['flower_run_id']}")


def print_footer(settings: Settings) -> None:
    print()
    print(f"Airflow UI   {settings.airflow_url}  (user admin, password in {airflow_passwords_file(settings)})")
    print(f"MLflow UI    {settings.mlflow_uri}")
    print("Stop it all  make down")


def run_attack_demo(settings: Settings, rounds: int, timeout: float, profile: str) -> dict[str, Any]:
    """plant_c poisons its updates; the same run with FedAvg and with the robust default, side by side."""
    stack.init_site_data(settings, batches=3)
    stack.up(settings, say=print)
    act_as_platform(settings)
    # A run may make a site attack only if the site opted in: plant_c's SuperNode does, for this demonstration
    # only, and is restarted without the opt-in afterwards.
    before = os.environ.get("MLEDGE_SIMULATION_SITES")
    os.environ["MLEDGE_SIMULATION_SITES"] = "plant_c"
    stack.restart(settings, "supernode-plant_c")
    results = {}
    try:
        for strategy in ("fedavg", "mledge-robust"):
            conf = {"rounds": rounds, "strategy": strategy, "attack_site": "plant_c", "attack_profile": profile,
                    "model_family": MLP}  # robust aggregation applies to the neural family
            results[strategy] = trigger_training(settings, conf, timeout)
    finally:
        if before is None:
            os.environ.pop("MLEDGE_SIMULATION_SITES", None)
        else:
            os.environ["MLEDGE_SIMULATION_SITES"] = before
        stack.restart(settings, "supernode-plant_c")
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


def mledge_json(settings: Settings, *args: str) -> Any:
    """Run one ``mledge`` command as Airflow would (a separate process) and parse its JSON answer."""
    import json
    import subprocess

    done = subprocess.run([str(settings.bin("workload", "mledge")), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mledge {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def print_alerts(alerts: list[dict], sites: tuple[str, ...]) -> None:
    print("Drift alerts (kind, statistic, p-value after correction, status)")
    for site in sites:
        found = [a for a in alerts if a["site"] == site and a["decision"] == "drift"]
        if not found:
            print(f"  {site:<8} none")
        for a in found:
            print(f"  {site:<8} {a['batch']:<14} {a['kind']:<8} {a['statistic']!s:<28.28} p={a['p_value']:.2e}"
                  f"  {a['status']}")


def print_costs(summary: dict) -> None:
    window = summary["window"]
    print(f"Costs        project {summary['project']}, {window['from']} .. {window['to']} (exclusive; "
          f"{window['anchor']}): {summary['total']} {summary['currency']} ({summary['metric']})")
    for source in summary["ingested"]:
        print(f"  ingested {source['source']:<22} {source.get('rows', source.get('skipped'))}")
    for provider, cost in summary["by_provider"].items():
        print(f"  {provider:<28} {cost} {summary['currency']}")
    rec = summary["recommendation"]
    declared = rec["declared"]
    print(f"Cheapest     cloud for {rec['site']}'s training template {rec['template']} "
          f"(declared: {declared['provider']} {declared['instance_type']} at {declared['usd_per_hour']} USD/h)")
    for offer in rec["offers"][:3]:
        print(f"  #{offer['rank']} {offer['provider']:<6} {offer['region']:<16} {offer['instance_type']:<20}"
              f" {offer['usd_per_hour']} USD/h  (as of {offer['as_of'] or 'an undated snapshot'}: {offer['source']})")
    if rec.get("message"):
        print(f"  {rec['message']}")


def privacy_conf(privacy: str) -> dict[str, str]:
    """The DAG params of a training under ``privacy``: a private mode trains the mlp family with fedavg (trees and
    per-site robust rules cannot run on hidden updates; fl/privacy/server.py refuses them, saying why)."""
    if privacy == DEFAULT_PRIVACY:
        return {}
    return {"privacy": privacy, "model_family": MLP, "strategy": "fedavg"}


def print_privacy(facts: dict[str, Any]) -> None:
    """The registered version's privacy tags: the mode, and the (epsilon, delta) the run spent."""
    import mlflow

    promotion = facts.get("promotion") or {}
    if not promotion:
        return
    tags = mlflow.MlflowClient().get_model_version(promotion["registered_model"], promotion["version"]).tags
    private = {k.removeprefix(TAG_PRIVACY).lstrip(".") or "mode": v for k, v in tags.items()
               if k.startswith(TAG_PRIVACY)}
    print("Privacy      " + ", ".join(f"{k}={v}" for k, v in sorted(private.items())))


def run_demo(settings: Settings, rounds: int, timeout: float, privacy: str = DEFAULT_PRIVACY) -> dict[str, Any]:
    """The whole loop: train, collect with drift at plant_b, evaluate drift, retrain on the Asset event, costs.

    ``privacy``: the mode of the demo's own training (DAG param); the drift-triggered retraining runs with the
    DAG's defaults, as an Asset event carries no params."""
    started = time.monotonic()
    stack.init_site_data(settings, batches=INITIAL_BATCHES)
    print("starting the local stack (Airflow, MLflow, Flower SuperLink and 3 SuperNodes)")
    stack.up(settings, say=print)
    act_as_platform(settings)
    client = admin_client(settings)

    print("\n== 1. federated training: the first global and per-site models")
    first = training_facts(client, run_dag(client, DAG_ID, {"rounds": rounds, **privacy_conf(privacy)}, timeout))
    print_summary(settings, first)
    _require(first)
    if privacy != DEFAULT_PRIVACY:
        print_privacy(first)

    print(f"\n== 2. data collection: {COLLECTED_BATCHES} more batches per site (drift scheduled at plant_b)")
    for _ in range(COLLECTED_BATCHES):
        collected = run_dag(client, COLLECTION, {}, timeout)
        _require(collected)
    print("where the last collection's tasks ran (a site's tasks on its own edge worker):")
    print_where_tasks_ran(client, collected, settings.sites)

    print("\n== 3. drift evaluation at every site; confirmed drift emits the Asset event")
    known = {r["dag_run_id"] for r in client.runs(DAG_ID)}
    drift = run_dag(client, DRIFT, {"retraining": "auto"}, timeout)
    _require(drift)
    print("where the evaluation's tasks ran:")
    print_where_tasks_ran(client, drift, settings.sites)
    alerts = mledge_json(settings, "drift", "alerts", "--json")
    print_alerts(alerts, settings.sites)

    retrain = None
    if any(a["decision"] == "drift" for a in alerts):
        print("\n== 4. federated_training, started by the drift Asset event")
        run_id = client.wait_for_new_run(DAG_ID, known, timeout=120)
        retrain = training_facts(client, finished_run(client, DAG_ID, run_id, timeout))
        print_summary(settings, retrain)
        _require(retrain)

    print("\n== 5. costs: the last 7 days of the sample billing exports, and the cheapest cloud for training")
    costs = mledge_json(settings, "costs", "demo-summary")
    print_costs(costs)

    print("\n== models")
    print_models()
    print_footer(settings)
    print(f"demo took {time.monotonic() - started:.0f}s")
    return {"training": first, "drift": drift, "alerts": alerts, "retraining": retrain, "costs": costs}


def _require(facts: dict[str, Any]) -> None:
    if facts["state"] != "success":
        raise RuntimeError(f"{facts['dag_id']} run {facts['dag_run_id']} ended {facts['state']}: {facts['tasks']}")
