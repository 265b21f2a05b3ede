"""Per-site strategy state (FedQV vote budgets, reputation histories) that outlives rounds, runs and restarts.

A site's budget or reputation is earned over many rounds, and a site that misbehaved must not get a clean slate by
reconnecting: so state is keyed by the site's stable name (never the Flower node id, which changes when a
SuperNode restarts) and kept in the platform database, one JSON document per (strategy, site).

Two runs must not interleave their read-modify-write of the same strategy's state, and a round the ServerApp then
rejects must leave no trace: ``SiteStateStore.lease`` makes one run the owner of a strategy's state (a lock the
operating system or the database releases when the run's process ends, so a crashed run leaves none behind), and
``RoundState`` holds a round's writes until the ServerApp accepts the round, then writes them in one transaction.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

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


class StateBusyError(RuntimeError):
    """Another run owns this strategy's state."""


class Lease:
    """Ownership of one strategy's state until ``release`` (or the end of the process holding it)."""

    def __init__(self, strategy: str, release: Any) -> None:
        self.strategy, self._release = strategy, release

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_key(strategy: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(f"mledge-strategy-state:{strategy}".encode()).digest()[:8], "big", signed=True)


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

    def lease(self, strategy: str, *, wait_s: float = 0.0, poll_s: float = 1.0) -> Lease:
        """Make this process the only owner of ``strategy``'s state, waiting up to ``wait_s`` for another owner to
        finish; raises StateBusyError naming the strategy. PostgreSQL: a session advisory lock on a connection kept
        open; an SQLite file: an exclusive flock on ``<database>.<strategy>.lock``; in-memory SQLite (one process):
        nothing to share, always granted."""
        deadline = time.monotonic() + wait_s
        while True:
            lease = self._try_lease(strategy)
            if lease is not None:
                return lease
            if time.monotonic() >= deadline:
                raise StateBusyError(
                    f"the state of strategy {strategy!r} is owned by another run (waited {wait_s:.0f}s): runs of one "
                    "strategy update its per-site state one at a time; retry when that run has ended"
                )
            time.sleep(poll_s)

    def _try_lease(self, strategy: str) -> Lease | None:
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            key = _lock_key(strategy)
            if conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
                conn.commit()

                def unlock() -> None:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.close()

                return Lease(strategy, unlock)
            conn.close()
            return None
        database = self.engine.url.database
        if not database or database == ":memory:":
            return Lease(strategy, None)
        path = Path(f"{database}.{hashlib.sha256(strategy.encode()).hexdigest()[:16]}.lock")
        handle: IO[bytes] = open(path, "ab")  # noqa: SIM115 - held open for the lease's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return Lease(strategy, handle.close)  # closing the file releases the lock

    def dispose(self) -> None:
        self.engine.dispose()


class RoundState:
    """A StateStore that keeps a round's writes until ``commit`` (the ServerApp accepted the round) and drops them
    on ``discard`` (it rejected it); reads see the round's own writes first."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._pending: dict[str, dict[str, dict]] = {}

    def load(self, strategy: str, site: str) -> dict:
        staged = self._pending.get(strategy, {})
        return copy.deepcopy(staged[site]) if site in staged else self.store.load(strategy, site)

    def save(self, strategy: str, site: str, state: dict) -> None:
        self.save_many(strategy, {site: state})

    def save_many(self, strategy: str, states: dict[str, dict]) -> None:
        plain = {site: _plain(s) for site, s in states.items()}  # refuse NaN now, not at commit
        self._pending.setdefault(strategy, {}).update(plain)

    def all(self, strategy: str) -> dict[str, dict]:
        return {**self.store.all(strategy), **copy.deepcopy(self._pending.get(strategy, {}))}

    def commit(self) -> None:
        """Write every staged state: one transaction per strategy (a round has one)."""
        pending, self._pending = self._pending, {}
        for strategy, states in pending.items():
            self.store.save_many(strategy, states)

    def discard(self) -> None:
        self._pending = {}


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
