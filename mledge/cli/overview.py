"""``mledge status`` and ``mledge demo``: the platform at a glance, and the whole loop end to end."""

from __future__ import annotations

import argparse

from mledge.cli.common import add
from mledge.contracts import DEFAULT_PRIVACY, PRIVACY_MODES, ROUNDS
from mledge.ops.settings import Settings


def cmd_status(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops.status import collect

    return collect(settings)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops import demo

    if args.attack:
        return demo.run_attack_demo(settings, rounds=args.rounds, timeout=args.timeout, profile=args.attack)
    return demo.run_demo(settings, rounds=args.rounds, timeout=args.timeout, privacy=args.privacy)


def register(commands: argparse._SubParsersAction) -> None:
    p = add(commands, "status", cmd_status, "sites, SuperNodes, Flower runs and registered models")
    p.add_argument("--json", action="store_true", help="print JSON (also the default when stdout is not a terminal)")
    p = add(commands, "demo", cmd_demo, "start the stack, run federated_training through Airflow, summarise")
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help="the most federated rounds per training (a run stops earlier once it has converged)")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument(
        "--privacy", choices=list(PRIVACY_MODES), default=DEFAULT_PRIVACY,
        help="privacy mode of the demo's trainings (DAG param privacy; a private mode trains the mlp family with "
        "fedavg, which every mode supports). Example: mledge demo --privacy secagg-dp",
    )
    p.add_argument(
        "--attack",
        nargs="?",
        const="attack='label-flip'",
        default=None,
        help="rerun with plant_c poisoning, once with FedAvg and once with mledge-robust (the robust default), compare",
    )
