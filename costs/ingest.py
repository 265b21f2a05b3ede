"""Day-by-day ingestion of one source into the store: one transaction per day, idempotent, bad days quarantined.

For each UTC day of the window the source is asked for that day's rows, every row is validated and given its
project (the configured tag key, default ``mledge-project``) and site (tag ``mledge-site``), and the day is
written in one transaction (``CostStore.write_day``). A day whose data are bad (``CostDataError``) writes nothing:
what was wrong is kept in the quarantine table, earlier data of that day stay as they were, and ingestion goes on
with the next day; at the end ``IngestError`` names every failed day, field and source, so the task fails. Any
other exception (network, credentials) stops the run; days already written stay written.

Recent cloud costs are estimates that change for a few days, so the scheduled ingestion re-reads a trailing
window (default 7 days); re-reading a day replaces it exactly (see ``costs.store``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from costs.focus import CostDataError, CostRow, day_start, project_of, validate
from costs.sources.base import CostSource
from costs.store import CostStore

log = logging.getLogger(__name__)

DEFAULT_TAG_KEY = "mledge-project"
SITE_TAG_KEY = "mledge-site"
DEFAULT_TRAILING_DAYS = 7


class IngestError(CostDataError):
    """Some days of a source had bad data; each failure names its day, field and problem."""

    def __init__(self, source: str, failures: list[CostDataError], days: list[date]) -> None:
        first = failures[0]
        super().__init__(source, first.field, first.problem, location=first.location, record=first.record)
        self.failures = failures
        self.days = days
        listing = "; ".join(f"{d}: {f}" for d, f in zip(days, failures, strict=True))
        self.args = (f"{len(days)} day(s) of source {source!r} not ingested (quarantined): {listing}",)


@dataclass
class IngestResult:
    source: str
    start: date
    end: date
    run_id: int
    days: list[dict] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(d["rows"] for d in self.days)

    def as_dict(self) -> dict:
        return {"source": self.source, "from": self.start.isoformat(), "to": self.end.isoformat(),
                "ingestion_run": self.run_id, "rows": self.rows, "days": self.days}


def days_between(start: date, end: date) -> list[date]:
    if end <= start:
        raise ValueError(f"empty window: from {start} to {end} (the end is exclusive)")
    return [start + timedelta(days=i) for i in range((end - start).days)]


def trailing_window(days: int, today: date | None = None) -> tuple[date, date]:
    """The last ``days`` complete UTC days: [today - days, today)."""
    if days < 1:
        raise ValueError(f"trailing days must be at least 1, not {days}")
    today = today or datetime.now(UTC).date()
    return today - timedelta(days=days), today


def ingest(source: CostSource, store: CostStore, start: date, end: date, *,
           tag_key: str = DEFAULT_TAG_KEY) -> IngestResult:
    """Ingest [start, end) day by day; raise ``IngestError`` at the end if any day was bad (others are kept).

    While one day is written, a worker thread already reads, validates and prepares the next one (the source is
    only ever called from that thread, one day at a time): the database and the parsing overlap.
    """
    days = days_between(start, end)
    run_id = store.begin_run(source.name, start, end)
    result = IngestResult(source.name, start, end, run_id)
    failures: list[CostDataError] = []
    failed_days: list[date] = []

    def load(day: date) -> tuple[list[tuple] | None, CostDataError | None]:
        low, high = day_start(day), day_start(day + timedelta(days=1))
        try:
            rows = [_checked(row, source.name, tag_key, low, high) for row in source.rows(day, day + timedelta(days=1))]
            return store.prepare(rows, source.name, run_id), None
        except CostDataError as exc:
            return None, exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-{source.name}") as pool:
        pending = pool.submit(load, days[0])
        try:
            for index, day in enumerate(days):
                values, error = pending.result()
                if index + 1 < len(days):
                    pending = pool.submit(load, days[index + 1])
                if error is not None:
                    log.error("%s: %s not ingested: %s", source.name, day, error)
                    store.quarantine(source.name, day, error, run_id)
                    failures.append(error)
                    failed_days.append(day)
                    result.days.append({"day": day.isoformat(), "rows": 0, "error": str(error)})
                    continue
                written = store.write_prepared(source.name, day_start(day), day_start(day + timedelta(days=1)),
                                               values, run_id)
                log.info("%s: %s: %d rows", source.name, day, written)
                result.days.append({"day": day.isoformat(), "rows": written})
        except Exception as exc:
            pending.cancel()
            store.finish_run(run_id, "failed", result.rows, len(failed_days), f"{type(exc).__name__}: {exc}")
            raise
    if failures:
        error = IngestError(source.name, failures, failed_days)
        store.finish_run(run_id, "partial", result.rows, len(failed_days), str(error))
        raise error
    store.finish_run(run_id, "succeeded", result.rows, 0)
    return result


def _checked(row: CostRow, source: str, tag_key: str, low: datetime, high: datetime) -> CostRow:
    validate(row, source)
    if not low <= row.charge_period_start < high:
        raise CostDataError(source, "ChargePeriodStart", f"{row.charge_period_start} is outside the requested day "
                            f"{low.date()} (the source returned a row it was not asked for)")
    row.x_project = project_of(row.tags, tag_key) or row.x_project
    if row.x_site is None:
        row.x_site = row.tags.get(SITE_TAG_KEY) or None
    return row
