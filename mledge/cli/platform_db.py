"""``mledge db migrate``: the platform database's one migrate step (the stack and the DAGs run it)."""

from __future__ import annotations

import argparse

from mledge.cli.common import add, group
from mledge.ops.settings import Settings


def cmd_db_migrate(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.db import migrate, safe_url
    from mledge.db.schema import metadata

    url = settings.platform_db_url
    return {"database": safe_url(url), "revision": migrate(url), "tables": sorted(metadata.tables)}


def register(commands: argparse._SubParsersAction) -> None:
    db = group(commands, "db", "the platform database (drift alerts, evaluated batches, strategy state)")
    add(db, "migrate", cmd_db_migrate, "create or upgrade the platform database's tables (idempotent)")
