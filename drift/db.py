"""The platform database as the drift tables use it: where it is, and one engine per URL.

Only SQLAlchemy and the standard library: the Airflow UI plugin imports the alert store through this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool


def platform_db_url(home: Path | None = None) -> str:
    """MLEDGE_PLATFORM_DB_URL, else SQLite ``platform.db`` in ``home`` (default: MLEDGE_HOME, else the cwd).

    The same rule as ``fl.serverapp.platform_db_url``, kept here because importing the ServerApp module pulls
    in Flower and MLflow, far too much for a short CLI command or the Airflow UI. The CLI passes its settings'
    home, which is MLEDGE_HOME whenever the stack runs the ServerApp, so both name the same database.
    """
    home = Path(home) if home is not None else Path(os.environ.get("MLEDGE_HOME") or Path.cwd())
    return os.environ.get("MLEDGE_PLATFORM_DB_URL") or f"sqlite:///{home / 'platform.db'}"


def make_engine(url: str) -> Engine:
    """An engine for SQLite files, ``sqlite://`` (in memory) and server databases such as PostgreSQL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # One shared connection, or every new connection would see a new, empty in-memory database.
        return sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    return sa.create_engine(url, pool_pre_ping=True)


def safe_url(url: str) -> str:
    """The URL without its password, for logs and command output."""
    return sa.make_url(url).render_as_string(hide_password=True)
