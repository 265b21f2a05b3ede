"""Per-site strategy state (FedQV vote budgets, reputation histories) that outlives rounds, runs and restarts.

A site's budget or reputation is earned over many rounds, and a site that misbehaved must not get a clean slate by
reconnecting: so state is keyed by the site's stable name (never the Flower node id, which changes when a
SuperNode restarts) and kept in the platform database, one JSON document per (strategy, site).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from mledge.db import connect
from mledge.db.schema import strategy_site_state


class StateStore(Protocol):
    """What the strategies need from a state store."""

    def load(self, strategy: str, site: str) -> dict: ...

    def save(self, strategy: str, site: str, state: dict) -> None: ...

    def save_many(self, strategy: str, states: dict[str, dict]) -> None: ...

    def all(self, strategy: str) -> dict[str, dict]: ...


def _plain(state: dict) -> dict:
    """A JSON-clean deep copy; refuses NaN/Infinity, which PostgreSQL's json type rejects too."""
    return json.loads(json.dumps(state, allow_nan=False))


class SiteStateStore:
    """Strategy state in a SQL database: SQLite file URLs, ``sqlite://`` (in memory) and PostgreSQL URLs.

    The table lives in the platform database (mledge/db/). ``save`` and ``save_many`` upsert in one transaction each.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = connect(url)

    def load(self, strategy: str, site: str) -> dict:
        query = sa.select(strategy_site_state.c.state).where(
            strategy_site_state.c.strategy == strategy, strategy_site_state.c.site == site
        )
        with self.engine.connect() as conn:
            state = conn.execute(query).scalar_one_or_none()
        return dict(state) if state else {}

    def save(self, strategy: str, site: str, state: dict) -> None:
        self.save_many(strategy, {site: state})

    def save_many(self, strategy: str, states: dict[str, dict]) -> None:
        """Upsert several sites' state at once: a round's updates land together or not at all."""
        if not states:
            return
        now = datetime.now(UTC)
        rows = [
            {"strategy": strategy, "site": site, "state": _plain(s), "updated_at": now} for site, s in states.items()
        ]
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect in ("sqlite", "postgresql"):
                insert = (sqlite if dialect == "sqlite" else postgresql).insert(strategy_site_state)
                statement = insert.on_conflict_do_update(
                    index_elements=[strategy_site_state.c.strategy, strategy_site_state.c.site],
                    set_={"state": insert.excluded.state, "updated_at": insert.excluded.updated_at},
                )
                conn.execute(statement, rows)
                return
            # Other databases: delete and insert inside the same transaction.
            table = strategy_site_state
            conn.execute(table.delete().where(table.c.strategy == strategy, table.c.site.in_(list(states))))
            conn.execute(table.insert(), rows)

    def all(self, strategy: str) -> dict[str, dict]:
        query = sa.select(strategy_site_state.c.site, strategy_site_state.c.state).where(
            strategy_site_state.c.strategy == strategy
        )
        with self.engine.connect() as conn:
            return {site: dict(state) for site, state in conn.execute(query)}

    def dispose(self) -> None:
        self.engine.dispose()


class MemoryStateStore:
    """The same interface in a dict: state for the life of one strategy object (used when none is given)."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], dict] = {}

    def load(self, strategy: str, site: str) -> dict:
        return copy.deepcopy(self._states.get((strategy, site), {}))

    def save(self, strategy: str, site: str, state: dict) -> None:
        self._states[(strategy, site)] = _plain(state)

    def save_many(self, strategy: str, states: dict[str, dict]) -> None:
        plain = {site: _plain(s) for site, s in states.items()}  # all or nothing, like the database
        self._states.update({(strategy, site): s for site, s in plain.items()})

    def all(self, strategy: str) -> dict[str, dict]:
        return {site: copy.deepcopy(s) for (name, site), s in self._states.items() if name == strategy}
