"""``mledge stack ...`` and ``mledge serve``: the local stack, and one component in the foreground."""

from __future__ import annotations

import argparse
import logging

from mledge.cli.common import add, group
from mledge.ops.settings import Settings

log = logging.getLogger("mledge")


def cmd_stack_up(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops import stack

    stack.init_site_data(settings, args.batches)
    return stack.up(settings, timeout=args.timeout, say=lambda m: log.info("%s", m))


def cmd_stack_down(args: argparse.Namespace, settings: Settings) -> list[str]:
    from mledge.ops import stack

    return stack.down(settings, say=lambda m: log.info("%s", m))


def cmd_stack_status(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops import stack

    return stack.status(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops import stack

    # Does not return: the process becomes the component (a container's main process).
    stack.serve(settings, args.component, [a for a in args.required if a != "--"])
    return {}


def cmd_gateway(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops import gateway

    host, _, port = args.listen.rpartition(":")
    config = gateway.GatewayConfig(upstream=args.upstream, allow=gateway.ROUTES[args.route], ca_file=args.ca)
    gateway.serve(config, host.strip("[]") or "127.0.0.1", int(port), args.cert, args.key)  # until stopped
    return {}


def register(commands: argparse._SubParsersAction) -> None:
    stack = group(commands, "stack", "the local stack")
    p = add(stack, "up", cmd_stack_up, "start every component that is not running and wait until healthy")
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--batches", type=int, default=3, help="initial batches per site")
    add(stack, "down", cmd_stack_down, "stop every component the stack started, by PID")
    add(stack, "status", cmd_stack_status, "which components run, with PIDs and health")
    p = add(commands, "serve", cmd_serve, "run one component of the stack in the foreground (containers)")
    p.add_argument("component", help="a component of `stack status`: superlink, supernode-<site>, mlflow, airflow-...")
    p.add_argument("required", nargs="*", help="after --: flags (with values) the component's command line must have")
    p = add(commands, "gateway", cmd_gateway, "a TLS gateway that forwards only a route's paths (sites' only door)")
    p.add_argument("route", choices=["fleet", "edge", "mlflow"],
                   help="fleet: Flower's Fleet API; edge: Airflow's worker APIs; mlflow: MLflow's REST API")
    p.add_argument("--listen", required=True, help="HOST:PORT to serve TLS on")
    p.add_argument("--upstream", required=True, help="the service's platform-side URL")
    p.add_argument("--cert", required=True, help="TLS certificate (the project's CA-issued server certificate)")
    p.add_argument("--key", required=True, help="its private key")
    p.add_argument("--ca", default=None, help="CA bundle to verify an https upstream")
