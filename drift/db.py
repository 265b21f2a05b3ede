"""The platform database as the drift tables use it (location and engine: fl/platform_db.py)."""

from __future__ import annotations

import sqlalchemy as sa

from fl.platform_db import make_engine, platform_db_url

__all__ = ["make_engine", "platform_db_url", "safe_url"]


def safe_url(url: str) -> str:
    """The URL without its password, for logs and command output."""
    return sa.make_url(url).render_as_string(hide_password=True)
