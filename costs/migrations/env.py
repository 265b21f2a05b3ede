"""Alembic environment of the cost store, run programmatically by ``costs.store.CostStore`` (no alembic.ini).

The store passes an open connection in ``config.attributes["connection"]``; the command line can still be used
with ``-x url=...``: ``alembic -c /dev/null -x url=sqlite:///costs.db upgrade head`` with script_location set.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from costs.store import metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("the cost store migrates online only: pass a connection or -x url=...")
run_migrations_online()
