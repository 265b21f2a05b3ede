"""``mledge fl ...``: federated runs on the SuperLink (wait for sites, submit, await)."""

from __future__ import annotations

import argparse
import logging

from mledge import contracts as c
from mledge.cli.common import add, group
from mledge.ops.settings import Settings

log = logging.getLogger("mledge")


def cmd_fl_wait_nodes(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import wait_for_nodes

    nodes = wait_for_nodes(args.min_nodes, args.timeout, c.FLWR_CONNECTION, settings.flwr_bin)
    log.info("%d SuperNodes online", len(nodes))
    return {"online": len(nodes), "node_ids": [n["node-id"] for n in nodes]}


def _ledger(settings: Settings):
    from fl.runs import RunLedger

    return RunLedger(settings.platform_home / "flower" / "dag_runs")


def cmd_fl_start(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import ensure_run, submit_run

    if args.attack_site:
        from fl.simulation.attacks import AttackProfile

        AttackProfile.parse(args.attack_profile)  # a bad profile is named now, not by a failing ClientApp
    from fl.privacy.modes import PrivacyCombinationError, validate

    try:  # a strategy that cannot run under the privacy mode is refused now, saying why, not by the ServerApp
        validate({c.PRIVACY_KEY: args.privacy, c.DP_EPSILON_KEY: args.dp_epsilon}, args.strategy)
    except PrivacyCombinationError as exc:
        raise SystemExit(f"mledge fl start: {exc}") from None
    if args.model_family == c.XGBOOST:  # a strategy that cannot apply to trees is refused now, saying why
        from fl.tree_strategy import UnsupportedStrategyError, tree_strategy

        try:
            tree_strategy(args.strategy, min_nodes=args.min_nodes, privacy=args.privacy)
        except UnsupportedStrategyError as exc:
            raise SystemExit(f"mledge fl start: {exc}") from None
    config = {
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "learning-rate": args.learning_rate,
        "min-nodes": args.min_nodes,
        "strategy": args.strategy,
        c.MODEL_FAMILY_KEY: args.model_family,
        c.PRIVACY_KEY: args.privacy,
        c.DP_EPSILON_KEY: args.dp_epsilon,
        "attack-site": args.attack_site,
        "attack-profile": args.attack_profile,
        "dag-run-id": args.dag_run_id,
    }
    if not args.dag_run_id:
        run_id, reused = submit_run(config, c.FLWR_CONNECTION, flwr_bin=settings.flwr_bin), False
    else:  # a retried task finds the run it started (or replaces one that failed): one training per DAG run
        run_id, reused = ensure_run(config, c.FLWR_CONNECTION, args.dag_run_id, _ledger(settings), settings.flwr_bin)
    log.info("%s Flower run %s", "Reusing" if reused else "Submitted", run_id)
    return {"run_id": run_id, "run_config": config, "reused": reused}


def cmd_fl_await(args: argparse.Namespace, settings: Settings) -> dict:
    """Await the run to its end; with --dag-run-id, a run that failed or was stopped (a SuperLink restart, say) is
    submitted again with the same configuration, within ensure_run's attempts. A stopped task stops its run."""
    import signal

    from fl.runs import COMPLETED, FAILED, FlowerError, await_run, ensure_run, flwr
    from mledge.registry.retraining import run_outcome

    run_id = args.run_id
    current = {"run_id": run_id}

    def stop_run(signum, frame):  # Airflow's on_kill (SIGTERM): the Flower run must not go on alone
        log.warning("task stopped: stopping Flower run %s", current["run_id"])
        try:
            flwr(["stop", str(current["run_id"]), c.FLWR_CONNECTION], settings.flwr_bin, timeout=30)
        finally:
            raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop_run)
    while True:
        info = await_run(
            current["run_id"],
            args.timeout,
            c.FLWR_CONNECTION,
            settings.flwr_bin,
            on_change=lambda i: log.info("Flower run %s: %s", current["run_id"], i["status"]),
        )
        if info["status"] not in FAILED or not args.dag_run_id:
            break
        log.warning("Flower run %s ended %s (%s): starting it again", current["run_id"], info["status"],
                    info.get("status-details"))
        config = _ledger(settings).get(args.dag_run_id)["attempts"][-1]["config"]
        current["run_id"], _ = ensure_run(
            config, c.FLWR_CONNECTION, args.dag_run_id, _ledger(settings), settings.flwr_bin
        )
    run_id = current["run_id"]
    result = {"run_id": run_id, "status": info["status"], "details": info.get("status-details")}
    result.update(run_outcome(run_id, settings.platform_home))
    for site, problems in result.get("site_failures", {}).items():
        for problem in problems:
            log.warning("site %s failed: %s", site, problem)
    if info["status"] != COMPLETED:
        raise FlowerError(f"Flower run {run_id} ended {info['status']}: {info.get('status-details')}")
    return result


def cmd_fl_publish(args: argparse.Namespace, settings: Settings) -> dict:
    """Send what the run's outbox holds to MLflow (idempotent; retried by the DAG while MLflow is down)."""
    from fl.outbox import Outbox, outbox_dir
    from fl.serverapp import log_model

    outbox = Outbox(outbox_dir(settings.platform_home, args.flower_run_id))
    left = outbox.pending()
    mlflow_run_id = outbox.flush(log_model, attempts=args.attempts)
    log.info("Flower run %s: sent to MLflow run %s: %s", args.flower_run_id, mlflow_run_id, left or "nothing left")
    return {"flower_run_id": args.flower_run_id, "mlflow_run_id": mlflow_run_id, "sent": left}


def register(commands: argparse._SubParsersAction) -> None:
    fl = group(commands, "fl", "federated runs on the SuperLink")
    p = add(fl, "wait-nodes", cmd_fl_wait_nodes, "wait until enough SuperNodes are connected")
    p.add_argument("--min-nodes", type=int, default=c.MIN_CLIENTS)
    p.add_argument("--timeout", type=float, default=c.NODE_WAIT_TIMEOUT_S)
    p = add(fl, "start", cmd_fl_start, "submit a federated training run; prints its run id")
    p.add_argument("--rounds", type=int, default=c.ROUNDS)
    p.add_argument("--local-epochs", type=int, default=c.LOCAL_EPOCHS)
    p.add_argument("--learning-rate", type=float, default=c.LEARNING_RATE)
    p.add_argument("--min-nodes", type=int, default=c.MIN_CLIENTS)
    p.add_argument("--strategy", default=c.DEFAULT_STRATEGY, choices=list(c.STRATEGIES), help="aggregation rule")
    p.add_argument("--model-family", default=c.DEFAULT_MODEL_FAMILY, choices=list(c.MODEL_FAMILIES),
                   help="mlp (any strategy) or xgboost (strategy fedavg: Flower's FedXgbBagging)")
    p.add_argument("--privacy", default=c.DEFAULT_PRIVACY, choices=list(c.PRIVACY_MODES),
                   help="secure aggregation and/or differential privacy (README: Privacy)")
    p.add_argument("--dp-epsilon", type=float, default=c.DP_EPSILON, help="dp, secagg-dp: the run's target epsilon")
    p.add_argument("--attack-site", default="", help="simulation: the site that attacks in this run")
    p.add_argument("--attack-profile", default="", help="simulation: its attack, e.g. \"attack='scaling'\"")
    p.add_argument("--dag-run-id", default="")
    p = add(fl, "await", cmd_fl_await, "wait for a run's terminal status; fails unless it completed")
    p.add_argument("--run-id", required=True)
    p.add_argument("--dag-run-id", default="", help="start the DAG run's training again if this run fails")
    p.add_argument("--timeout", type=float, default=c.RUN_TIMEOUT_S)
    p = add(fl, "publish", cmd_fl_publish, "send a finished run's results from the platform's outbox to MLflow")
    p.add_argument("--flower-run-id", required=True)
    p.add_argument("--attempts", type=int, default=5, help="tries per MLflow call, with exponential backoff")
