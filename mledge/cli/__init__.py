"""``mledge``: the one entry point to MLEDGE's workload, for people, Airflow tasks and containers alike.

Every command prints one result on stdout and logs to stderr (which becomes the task log): JSON when stdout is not
a terminal or with ``--json`` (Airflow tasks: the task's XCom; ``MledgeHook`` passes ``--json``), a table in a
terminal or with ``--table`` (``mledge.cli.output``). Heavy libraries are imported inside the command that needs
them. One module per command group; each adds its commands with ``register(commands)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from mledge.cli import console, costs, data, drift, fl, models, output, overview, platform_db, security, sites, stack
from mledge.cli.common import become_site
from mledge.ops.components import bundle_path, trust
from mledge.ops.settings import Settings

log = logging.getLogger("mledge")
GROUPS = (data, stack, security, sites, fl, models, platform_db, drift, costs, overview, console)


def _emit(document: Any, args: argparse.Namespace) -> None:
    """The result as JSON (not a terminal, or --json) or as a table (a terminal, or --table)."""
    output.emit(document, args, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = output.ArgumentParser(prog="mledge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    output.add_output_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=output.ArgumentParser)
    for module in GROUPS:
        module.register(commands)
    output.add_examples(parser)
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
    if settings.tls and os.access(bundle_path(settings.ca_cert), os.R_OK):  # verify our servers with our CA
        os.environ.update(trust(settings.ca_cert))
    os.environ.setdefault("FLWR_HOME", str(settings.flwr_home))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # stdout is this program's JSON answer: MLflow must not print "View run ... at" there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Run by a person on the stack's machine, act as the platform identity once setup has made it; in an
    # Airflow task the environment already names it.
    from mledge.security import mlflow_auth

    if "MLFLOW_TRACKING_USERNAME" not in os.environ and mlflow_auth.secrets_file(settings).exists():
        os.environ.update(mlflow_auth.client_env(settings, "platform"))
    if getattr(args.func, "at_site", False) and getattr(args, "site", None) in settings.sites:
        become_site(settings.site_home(args.site), args.site)
    try:
        result = args.func(args, settings)
    except Exception as exc:  # one clear line for people and task logs; -v shows the traceback
        log.debug("traceback", exc_info=True)
        log.error("%s: %s", exc.__class__.__name__, exc)
        return 1
    if args.func is not overview.cmd_demo:
        _emit(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
