"""``mledge``: the one entry point to MLEDGE's workload, for people, Airflow tasks and containers alike.

Commands that Airflow runs print one JSON document on stdout (their result, which becomes the task's XCom) and
log to stderr (which becomes the task log). Heavy libraries are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mledge.settings import FLWR_CONNECTION, Settings

log = logging.getLogger("mledge")


def _emit(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# --- data ------------------------------------------------------------------------------------------------


def init_site_data(settings: Settings, batches: int) -> dict:
    """Give every site at least ``batches`` batches in its own store (existing batches are kept)."""
    from fl.sites import site_profile
    from fl.store import append_generated_batch, batch_paths

    added: dict[str, list[str]] = {}
    for site in settings.sites:
        store = settings.site_store(site)
        while len(batch_paths(store)) < batches:
            added.setdefault(site, []).append(str(append_generated_batch(store, site_profile(site))))
    return {"data_root": str(settings.data_root), "added": added}


def cmd_data_init(args: argparse.Namespace, settings: Settings) -> dict:
    return init_site_data(settings, args.batches)


# --- stack -----------------------------------------------------------------------------------------------


def cmd_stack_up(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge import stack

    init_site_data(settings, args.batches)
    return stack.up(settings, timeout=args.timeout, say=lambda m: log.info("%s", m))


def cmd_stack_down(args: argparse.Namespace, settings: Settings) -> list[str]:
    from mledge import stack

    return stack.down(settings, say=lambda m: log.info("%s", m))


def cmd_stack_status(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge import stack

    return stack.status(settings)


# --- Flower TLS and SuperNode keys ---------------------------------------------------------------------------


def cmd_pki_init(args: argparse.Namespace, settings: Settings) -> dict:
    """The local CA and SuperLink certificate, and a key pair for each site whose store is here (mounted)."""
    from mledge import node_keys, pki, stack

    tls = pki.ensure_tls(settings.secrets, hostnames=[*args.hostname, *stack.superlink_hostnames()])
    keys = {
        site: node_keys.ensure_node_key(site, settings.site_store(site))
        for site in settings.sites
        if settings.site_store(site).is_dir()
    }
    return {
        "ca_cert": str(tls.ca_cert),
        "server_cert": str(tls.server_cert),
        "server_key": str(tls.server_key),
        "sites": {s: {"public_key": str(k.public_key), "fingerprint": k.fingerprint} for s, k in keys.items()},
    }


def cmd_nodes_register(args: argparse.Namespace, settings: Settings) -> list[dict]:
    """Register public keys with the SuperLink: <dir>/<site>.pub, or each site's own keys/supernode.pub."""
    from pathlib import Path

    from mledge import node_keys, stack

    if args.public_keys_dir:
        keys = {p.stem: p for p in sorted(Path(args.public_keys_dir).glob("*.pub"))}
        if not keys:
            raise FileNotFoundError(f"no <site>.pub public key in {args.public_keys_dir}")
    else:
        here = [s for s in settings.sites if settings.site_store(s).is_dir()]
        keys = {s: node_keys.public_key_path(settings.site_store(s)) for s in here}
    done = node_keys.ensure_registered(keys, FLWR_CONNECTION, stack.supernode_registry(settings), _flwr_bin(settings))
    return [
        {"site": n.site, "node_id": n.node_id, "fingerprint": n.fingerprint, "newly_registered": n.newly_registered}
        for n in done
    ]


def cmd_nodes_list(args: argparse.Namespace, settings: Settings) -> list[dict]:
    from mledge import node_keys, stack

    return node_keys.registered_nodes(FLWR_CONNECTION, stack.supernode_registry(settings), _flwr_bin(settings))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge import stack

    # Does not return: the process becomes the component (a container's main process).
    stack.serve(settings, args.component, [a for a in args.required if a != "--"])
    return {}


def cmd_mlflow_apply_permissions(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.mlflow_auth import apply_permissions

    return apply_permissions(settings)


# --- federated learning ----------------------------------------------------------------------------------


def _flwr_bin(settings: Settings) -> str:
    path = settings.bin("workload", "flwr")
    return str(path) if path.exists() else "flwr"


def cmd_fl_wait_nodes(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import wait_for_nodes

    nodes = wait_for_nodes(args.min_nodes, args.timeout, FLWR_CONNECTION, _flwr_bin(settings))
    log.info("%d SuperNodes online", len(nodes))
    return {"online": len(nodes), "node_ids": [n["node-id"] for n in nodes]}


def cmd_fl_start(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import submit_run
    from fl.strategies import STRATEGIES

    if args.strategy not in STRATEGIES:  # fail here, not minutes later inside the ServerApp
        raise ValueError(f"unknown strategy {args.strategy!r}; valid: {', '.join(STRATEGIES)}")
    if args.attack_site:
        from fl.attacks import AttackProfile

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
    run_id = submit_run(config, FLWR_CONNECTION, flwr_bin=_flwr_bin(settings))
    log.info("Submitted Flower run %s", run_id)
    return {"run_id": run_id, "run_config": config}


def cmd_fl_await(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.runs import COMPLETED, FlowerError, await_run

    info = await_run(
        args.run_id, args.timeout, FLWR_CONNECTION, _flwr_bin(settings),
        on_change=lambda i: log.info("Flower run %s: %s", args.run_id, i["status"]),
    )
    result = {"run_id": args.run_id, "status": info["status"], "details": info.get("status-details")}
    result.update(_run_failures(args.run_id))
    for site, problems in result.get("site_failures", {}).items():
        for problem in problems:
            log.warning("site %s failed: %s", site, problem)
    if info["status"] != COMPLETED:
        raise FlowerError(f"Flower run {args.run_id} ended {info['status']}: {info.get('status-details')}")
    return result


def _run_failures(flower_run_id: str) -> dict:
    """Which sites failed in a run and why, as the ServerApp recorded them in MLflow."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fl.registry import EVIDENCE_PATH, find_run

    try:
        run = find_run(mlflow.MlflowClient(), flower_run_id)
        evidence = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{EVIDENCE_PATH}")
    except (LookupError, MlflowException, OSError) as exc:
        return {"mlflow_run_id": None, "site_failures": {}, "compute_seconds": {}, "note": f"no MLflow record: {exc}"}
    return {
        "mlflow_run_id": run.info.run_id,
        "site_failures": evidence.get("failures", {}),
        "compute_seconds": evidence.get("compute_seconds", {}),
    }


# --- models ----------------------------------------------------------------------------------------------


def cmd_models_promote(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.registry import promote

    alerts = _alerts_in_retraining(settings) if args.resolve_drift_alerts else []
    result = promote(
        args.flower_run_id,
        metric=args.metric,
        margin=args.margin,
        site_margin=args.site_margin,
        drift_alerts=",".join(str(a["id"]) for a in alerts),
    )
    log.info("Version %s of %s is %s: %s", result["version"], result["registered_model"], result["alias"],
             result["reason"])
    for entry in result["site_models"].values():
        log.info("Version %s of %s is %s: %s", entry["version"], entry["registered_model"], entry["alias"],
                 entry["reason"])
    result["resolved_drift_alerts"] = _resolve_alerts(settings, alerts, result)
    return result


def _alerts_in_retraining(settings: Settings) -> list[dict]:
    """The drift alerts whose retraining this run is: approved (by a person or automatically), not yet resolved."""
    from drift.alerts import AlertStore
    from drift.db import platform_db_url

    return AlertStore(platform_db_url(settings.home)).list(status="retraining")


def _resolve_alerts(settings: Settings, alerts: list[dict], result: dict) -> list[int]:
    from drift.alerts import AlertStore
    from drift.db import platform_db_url

    if not alerts:
        return []
    store = AlertStore(platform_db_url(settings.home))
    versions = ", ".join(
        f"{m['registered_model']} v{m['version']} ({m['alias']})"
        for m in [result, *result["site_models"].values()]
    )
    note = f"retrained by DAG run {result['dag_run_id']} (Flower run {result['flower_run_id']}): {versions}"
    for alert in alerts:
        store.set_status(alert["id"], "resolved", user="platform", note=note)
    return [a["id"] for a in alerts]


def cmd_models_rollback(args: argparse.Namespace, settings: Settings) -> dict:
    from fl.registry import rollback

    result = rollback(args.name)
    log.info("%s: champion is version %s again (version %s rolled back)", args.name, result["champion"],
             result["rolled_back"])
    return result


# --- overview --------------------------------------------------------------------------------------------


def cmd_secrets_show(args: argparse.Namespace, settings: Settings) -> dict:
    """A stored credential, on request (the only place besides first setup where one is printed)."""
    from mledge import mlflow_auth

    identity = args.name.removeprefix("mlflow-")
    return {"url": settings.mlflow_uri, "username": identity, "password": mlflow_auth.show_password(settings, identity)}


def cmd_status(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.status import collect

    return collect(settings)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.demo import run_demo

    if args.attack:
        from mledge.demo import run_attack_demo

        return run_attack_demo(settings, rounds=args.rounds, timeout=args.timeout, profile=args.attack)
    return run_demo(settings, rounds=args.rounds, timeout=args.timeout)


# --- parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mledge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(group: argparse._SubParsersAction, name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    data = commands.add_parser("data", help="site data stores").add_subparsers(dest="sub", required=True)
    p = add(data, "init", cmd_data_init, "give every site at least N batches of generated data")
    p.add_argument("--batches", type=int, default=3)

    stack = commands.add_parser("stack", help="the local stack").add_subparsers(dest="sub", required=True)
    p = add(stack, "up", cmd_stack_up, "start every component that is not running and wait until healthy")
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--batches", type=int, default=3, help="initial batches per site")
    add(stack, "down", cmd_stack_down, "stop every component the stack started, by PID")
    add(stack, "status", cmd_stack_status, "which components run, with PIDs and health")

    pki = commands.add_parser("pki", help="the SuperLink's local CA").add_subparsers(dest="sub", required=True)
    p = add(pki, "init", cmd_pki_init, "create or reuse the local CA, SuperLink certificate and site key pairs")
    p.add_argument("--hostname", action="append", default=[], help="extra SuperLink name (repeatable)")
    nodes = commands.add_parser("nodes", help="SuperNode keys").add_subparsers(dest="sub", required=True)
    p = add(nodes, "register", cmd_nodes_register, "register site public keys with the SuperLink (idempotent)")
    p.add_argument("--public-keys-dir", default=None, help="folder of <site>.pub files (default: each site's key)")
    add(nodes, "list", cmd_nodes_list, "the SuperLink's SuperNodes with their sites and status")

    mlf = commands.add_parser("mlflow", help="the tracking server").add_subparsers(dest="sub", required=True)
    add(mlf, "apply-permissions", cmd_mlflow_apply_permissions, "users and grants of mlflow/permissions.toml")
    p = add(commands, "serve", cmd_serve, "run one component of the stack in the foreground (containers)")
    p.add_argument("component", help="a component of `stack status`: superlink, supernode-<site>, mlflow, airflow-...")
    p.add_argument("required", nargs="*", help="after --: flags (with values) the component's command line must have")

    fl = commands.add_parser("fl", help="federated runs on the SuperLink").add_subparsers(dest="sub", required=True)
    p = add(fl, "wait-nodes", cmd_fl_wait_nodes, "wait until enough SuperNodes are connected")
    p.add_argument("--min-nodes", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p = add(fl, "start", cmd_fl_start, "submit a federated training run; prints its run id")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=0.005)
    p.add_argument("--min-nodes", type=int, default=3)
    p.add_argument("--strategy", default="fedavg", help="aggregation rule, see `fl/strategies/`")
    p.add_argument("--attack-site", default="", help="simulation: the site that attacks in this run")
    p.add_argument("--attack-profile", default="", help="simulation: its attack, e.g. \"attack='scaling'\"")
    p.add_argument("--dag-run-id", default="")
    p = add(fl, "await", cmd_fl_await, "wait for a run's terminal status; fails unless it completed")
    p.add_argument("--run-id", required=True)
    p.add_argument("--timeout", type=float, default=1800)

    sec = commands.add_parser("secrets", help="generated credentials").add_subparsers(dest="sub", required=True)
    p = add(sec, "show", cmd_secrets_show, "print one stored credential, e.g. mlflow-admin (MLflow UI login)")
    p.add_argument("name", help="mlflow-<identity>: mlflow-admin, mlflow-platform, mlflow-plant_a, ...")

    models = commands.add_parser("models", help="the model registry").add_subparsers(dest="sub", required=True)
    p = add(models, "promote", cmd_models_promote, "register a run's global model and apply the promotion gate")
    p.add_argument("--flower-run-id", required=True)
    p.add_argument("--metric", default="f1", choices=["f1", "recall", "accuracy", "loss"])
    p.add_argument("--margin", type=float, default=0.0, help="how much better than the champion it must be")
    p.add_argument("--site-margin", type=float, default=0.0,
                   help="how much a site's personalised model must beat that site's champion")
    p.add_argument("--resolve-drift-alerts", action="store_true",
                   help="link the drift alerts awaiting retraining to the new versions and resolve them")
    p = add(models, "rollback", cmd_models_rollback, "move alias champion back to the previous champion")
    p.add_argument("name", help="registered model, e.g. plant_b-axis_failures-federated")

    from mledge import costs_cli, drift_cli

    drift_cli.register(commands, add)
    costs_cli.register(commands, add)

    p = add(commands, "status", cmd_status, "sites, SuperNodes, Flower runs and registered models")
    p.add_argument("--json", action="store_true", help="print JSON (the default for this program's commands)")
    p = add(commands, "demo", cmd_demo, "start the stack, run federated_training through Airflow, summarise")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument(
        "--attack",
        nargs="?",
        const="attack='label-flip'",
        default=None,
        help="rerun with plant_c poisoning, once with FedAvg and once with FedQV + reputation, and compare",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings()
    # The same program runs on a laptop, in a container and in an Airflow task: point it at the platform's
    # tracking server and SuperLink connection unless the environment already says where they are.
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    os.environ.setdefault("FLWR_HOME", str(settings.flwr_home))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # stdout is this program's JSON answer: MLflow must not print "View run ... at" there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Run by a person on the stack's machine, act as the platform identity once setup has made it; in an
    # Airflow task the environment already names it.
    from mledge import mlflow_auth

    if "MLFLOW_TRACKING_USERNAME" not in os.environ and mlflow_auth.secrets_file(settings).exists():
        os.environ.update(mlflow_auth.client_env(settings, "platform"))
    try:
        result = args.func(args, settings)
    except Exception as exc:  # one clear line for people and task logs; -v shows the traceback
        log.debug("traceback", exc_info=True)
        log.error("%s: %s", exc.__class__.__name__, exc)
        return 1
    if args.func is not cmd_demo:
        _emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
