"""Which batches of a site have been evaluated for drift: the ``drift_processed_batches`` table.

A batch is marked in the same transaction that records its alerts, so a retried evaluation neither skips a
batch nor records it twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from drift.alerts import json_clean
from mledge.db import connect
from mledge.db.schema import drift_processed_batches


class ProcessedBatches:
    """The evaluated batches per site."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = connect(url)

    def processed(self, site: str) -> set[str]:
        """Names of the site's evaluated batches (``batch-000004``)."""
        query = sa.select(drift_processed_batches.c.batch).where(drift_processed_batches.c.site == site)
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def mark(
        self,
        site: str,
        batches: Iterable[str],
        evaluation: Mapping[str, Any] | None = None,
        connection: Connection | None = None,
    ) -> list[str]:
        """Mark batches evaluated (those already marked are left as they are); returns the newly marked ones."""
        wanted = sorted(set(batches))

        def write(conn: Connection) -> list[str]:
            existing = set(
                conn.execute(
                    sa.select(drift_processed_batches.c.batch).where(
                        drift_processed_batches.c.site == site, drift_processed_batches.c.batch.in_(wanted)
                    )
                ).scalars()
            )
            new = [b for b in wanted if b not in existing]
            if new:
                now = datetime.now(UTC)
                doc = json_clean(dict(evaluation or {}))
                conn.execute(
                    drift_processed_batches.insert(),
                    [{"site": site, "batch": b, "processed_at": now, "evaluation": doc} for b in new],
                )
            return new

        if connection is not None:
            return write(connection)
        with self.engine.begin() as conn:
            return write(conn)

    def dispose(self) -> None:
        self.engine.dispose()
