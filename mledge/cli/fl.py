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


def cmd_fl_start(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import submit_run

    if args.attack_site:
        from fl.simulation.attacks import AttackProfile

        AttackProfile.parse(args.attack_profile)  # a bad profile is named now, not by a failing ClientApp
    config = {
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "learning-rate": args.learning_rate,
        "min-nodes": args.min_nodes,
        "strategy": args.strategy,
        "attack-site": args.attack_site,
        "attack-profile": args.attack_profile,
        "dag-run-id": args.dag_run_id,
    }
    run_id = submit_run(config, c.FLWR_CONNECTION, flwr_bin=settings.flwr_bin)
    log.info("Submitted Flower run %s", run_id)
    return {"run_id": run_id, "run_config": config}


def cmd_fl_await(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import COMPLETED, FlowerError, await_run
    from mledge.registry.retraining import run_outcome

    info = await_run(
        args.run_id,
        args.timeout,
        c.FLWR_CONNECTION,
        settings.flwr_bin,
        on_change=lambda i: log.info("Flower run %s: %s", args.run_id, i["status"]),
    )
    result = {"run_id": args.run_id, "status": info["status"], "details": info.get("status-details")}
    result.update(run_outcome(args.run_id))
    for site, problems in result.get("site_failures", {}).items():
        for problem in problems:
            log.warning("site %s failed: %s", site, problem)
    if info["status"] != COMPLETED:
        raise FlowerError(f"Flower run {args.run_id} ended {info['status']}: {info.get('status-details')}")
    return result


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
    p.add_argument("--attack-site", default="", help="simulation: the site that attacks in this run")
    p.add_argument("--attack-profile", default="", help="simulation: its attack, e.g. \"attack='scaling'\"")
    p.add_argument("--dag-run-id", default="")
    p = add(fl, "await", cmd_fl_await, "wait for a run's terminal status; fails unless it completed")
    p.add_argument("--run-id", required=True)
    p.add_argument("--timeout", type=float, default=c.RUN_TIMEOUT_S)
