"""The platform database (strategy state, drift alerts): where it is, and an engine for its URL.

Only SQLAlchemy and the standard library, so that short CLI commands use it without importing Flower or MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool


def platform_db_url(home: Path | None = None) -> str:
    """MLEDGE_PLATFORM_DB_URL, else SQLite ``platform.db`` in ``home`` (default: MLEDGE_HOME, else the cwd)."""
    home = Path(home) if home is not None else Path(os.environ.get("MLEDGE_HOME") or Path.cwd())
    return os.environ.get("MLEDGE_PLATFORM_DB_URL") or f"sqlite:///{home / 'platform.db'}"


def make_engine(url: str) -> Engine:
    """An engine for SQLite files, ``sqlite://`` (in memory) and server databases such as PostgreSQL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # One shared connection, or every new connection would see a new, empty in-memory database.
        return sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    return sa.create_engine(url, pool_pre_ping=True)
