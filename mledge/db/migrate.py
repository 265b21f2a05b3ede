"""Alembic upgrades run programmatically (no alembic.ini): the platform database's, and the cost store's.

``upgrade`` is the one implementation: a cheap revision check first (most calls find the database at head), then
the upgrade in one transaction under a lock, so that parallel first users (tasks, the ServerApp) never race the
DDL: a PostgreSQL advisory lock, or a file lock beside a SQLite file.
"""

from __future__ import annotations

import logging
import zlib
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mledge.db.engine import make_engine, safe_url

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@contextmanager
def _quiet_alembic():
    """Alembic logs its plugins and DDL mode at INFO on every check: noise in every task log."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _file_lock(engine: Engine):
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        from filelock import FileLock

        with FileLock(f"{database}.migrate.lock", timeout=300):
            yield
    else:
        yield


def upgrade(engine: Engine, script_location: Path, adopt_tables: tuple[str, ...] = ()) -> str:
    """Bring the database to the newest revision of ``script_location``; returns that revision.

    ``adopt_tables``: tables that an earlier release created without Alembic; a database that has all of them
    and no revision yet is stamped at the first revision instead of created again.
    """
    with _quiet_alembic():  # alembic announces its plugins at INFO when imported
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(script_location))
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head()
        with engine.connect() as conn:
            if MigrationContext.configure(conn).get_current_revision() == head:
                return head
        with _file_lock(engine), engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # one migrator at a time
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({zlib.crc32(str(script_location).encode())})")
            config.attributes["connection"] = conn
            current = MigrationContext.configure(conn).get_current_revision()
            existing = set(sa.inspect(conn).get_table_names())
            if current is None and adopt_tables and set(adopt_tables) <= existing:
                command.stamp(config, script.get_base())
            command.upgrade(config, "head")
    log.debug("%s migrated to %s", safe_url(str(engine.url)), head)
    return head


def migrate(target: str | Engine) -> str:
    """The platform database's migrate step; returns the revision it is at."""
    from mledge.db.schema import metadata

    engine = make_engine(target) if isinstance(target, str) else target
    return upgrade(engine, MIGRATIONS, adopt_tables=tuple(metadata.tables))


def connect(url: str) -> Engine:
    """An engine for the platform database, migrated (a no-op check once the stack or a DAG has migrated it)."""
    engine = make_engine(url)
    migrate(engine)
    return engine


def run_alembic_env(metadata: sa.MetaData, what: str) -> None:
    """The body of an Alembic ``env.py`` (the platform database's and the cost store's): online migrations on
    the connection ``upgrade`` passes in, or on ``-x url=...`` from the command line."""
    from alembic import context

    def run(connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        raise SystemExit(f"{what} migrates online only: pass a connection or -x url=...")
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with sa.create_engine(url).begin() as conn:
        run(conn)
