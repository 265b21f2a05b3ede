"""``mledge console ...``: what the operator console in the Airflow UI shows, one command per page.

``mledge console federation``: per site whether it is registered, its SuperNode and edge worker, last batch, open
drift alerts and whether it requires training; the minimum sites to train; the last training runs with their
per-round F1 (global and per site); the models with versions, aliases and promotion reasons. A table for people,
JSON with ``--json`` (or whenever stdout is not a terminal: the Airflow plugin reads it).
"""

from __future__ import annotations

import argparse

from mledge.cli.common import group, positive
from mledge.ops.settings import Settings

EXAMPLES = """examples:
  mledge console federation            # a table in a terminal
  mledge console federation --json     # the document the Federation page renders
  mledge console federation --runs 10  # the last 10 training runs with their rounds
"""


def cmd_federation(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.ops.console import federation

    return federation(settings, runs=args.runs)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``console`` command group to the ``mledge`` parser."""
    console = group(commands, "console", "what the operator console in the Airflow UI shows")
    p = console.add_parser(
        "federation",
        help="sites, readiness to train, last runs with per-round F1, models",
        description=__doc__.split("\n\n")[1],
        epilog=EXAMPLES,
    )
    p.set_defaults(func=cmd_federation)
    p.add_argument("--runs", type=positive, default=5, help="how many of the last training runs")
    p.add_argument("--json", action="store_true", help="print JSON (also the default when stdout is not a terminal)")
