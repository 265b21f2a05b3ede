"""An engine for a platform database URL: SQLite files, ``sqlite://`` (in memory) and server databases."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool


def make_engine(url: str) -> Engine:
    """An engine for SQLite files, ``sqlite://`` (in memory) and server databases such as PostgreSQL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # One shared connection, or every new connection would see a new, empty in-memory database.
            return sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
    return sa.create_engine(url, pool_pre_ping=True)


def safe_url(url: str) -> str:
    """The URL without its password, for logs and command output."""
    return sa.make_url(url).render_as_string(hide_password=True)
