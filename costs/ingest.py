"""Day-by-day ingestion of one source into the store: one transaction per day, idempotent, bad days quarantined.

For each UTC day of the window the source is asked for that day (``CostSource.batch``): its rows as Arrow columns,
already checked. Each row gets its project from the configured tag (``TagRule``: one key per provider, optionally
case-insensitive) and its site from ``mledge-site``, rows that are one charge split over lines are added up, and
the day is written in one transaction (``CostStore.write_day``), which leaves an unchanged day untouched.

A day whose data are bad (``CostDataError``: a field, an overflowing amount, an overlapping or incomplete delivery)
writes nothing: what was wrong is kept in the quarantine table, the stored rows of that day stay as they were, and
ingestion goes on with the next day. A day no delivery covers is left as it is. At the end ``IngestError`` names
each distinct problem once, with the days it affected, so the task fails; the partial result (days written,
kept, failed) goes with it. Any other exception (network, credentials) stops the run; days already written stay.

Recent cloud costs are estimates that change for a few days, so the scheduled ingestion re-reads a trailing
window (default 7 days); re-reading a day replaces it exactly (see ``costs.store``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from costs.focus import CostDataError, TagRule
from costs.sources.base import CostSource, DayBatch
from costs.store import CostStore, StoreDataError

log = logging.getLogger(__name__)

DEFAULT_TAG_KEY = "mledge-project"
SITE_TAG_KEY = "mledge-site"
DEFAULT_TRAILING_DAYS = 7


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


class IngestError(CostDataError):
    """Some days of a source had bad data; each distinct problem is named once, with the days it affected."""

    def __init__(self, source: str, failures: list[CostDataError], days: list[date],
                 result: IngestResult | None = None) -> None:
        first = failures[0]
        super().__init__(source, first.field, first.problem, location=first.location, record=first.record)
        self.failures = failures
        self.days = days
        self.result = result
        self.args = (f"{len(days)} day(s) of source {source!r} not ingested (quarantined, stored rows kept): "
                     + "; ".join(f"{e['message']} [{_span(e['days'])}]" for e in self.errors()),)

    def errors(self) -> list[dict[str, Any]]:
        """Distinct problems with the days each affected (a file-level problem is listed once, not per day)."""
        grouped: dict[str, dict[str, Any]] = {}
        for day, failure in zip(self.days, self.failures, strict=True):
            entry = grouped.setdefault(str(failure), {
                "field": failure.field, "problem": failure.problem, "location": failure.location,
                "message": str(failure), "days": []})
            entry["days"].append(day.isoformat())
        return list(grouped.values())

    def summary(self) -> dict[str, Any]:
        """The JSON the command line prints when a run fails: what was done and what was not."""
        done = self.result.as_dict() if self.result is not None else {"source": self.source}
        return {**done, "status": "partial", "failed_days": [d.isoformat() for d in self.days],
                "errors": [{k: v for k, v in e.items() if k != "message"} for e in self.errors()]}


def _span(days: list[str]) -> str:
    return days[0] if len(days) == 1 else f"{len(days)} days, {days[0]} .. {days[-1]}"


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


def prepare(batch: DayBatch, rule: TagRule, source: str) -> DayBatch:
    """Project and site from tags, natural keys, split lines added up: the batch as the store writes it."""
    from costs.columnar import attribute, merge_duplicates, row_keys

    if batch.table is None:
        return batch
    table = attribute(batch.table, rule)
    keys = row_keys(table) if table.num_rows else None
    if keys is not None:
        table, keys = merge_duplicates(table, keys)
        table = table.append_column("x_row_key", keys)
    else:
        import pyarrow as pa

        table = table.append_column("x_row_key", pa.array([], pa.string()))
    return DayBatch(batch.day, table, batch.skipped, batch.delivery)


def ingest(source: CostSource, store: CostStore, start: date, end: date, *, tag_key: str = DEFAULT_TAG_KEY,
           tag_rule: TagRule | None = None) -> IngestResult:
    """Ingest [start, end) day by day; raise ``IngestError`` at the end if any day was bad (others are kept).

    While one day is written, a worker thread already reads, checks and prepares the next one (the source is
    only ever called from that thread, one day at a time): the database and the parsing overlap.
    """
    rule = tag_rule or TagRule(tag_key, site_key=SITE_TAG_KEY)
    days = days_between(start, end)
    run_id = store.begin_run(source.name, start, end)
    result = IngestResult(source.name, start, end, run_id)
    failures: list[CostDataError] = []
    failed_days: list[date] = []

    def load(day: date) -> tuple[DayBatch | None, CostDataError | None]:
        try:
            return prepare(source.batch(day), rule, source.name), None
        except CostDataError as exc:
            return None, exc

    def fail(day: date, error: CostDataError) -> None:
        log.error("%s: %s not ingested: %s", source.name, day, error)
        store.quarantine(source.name, day, error, run_id)
        failures.append(error)
        failed_days.append(day)
        result.days.append({"day": day.isoformat(), "rows": 0, "error": str(error)})

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ingest-{source.name}") as pool:
        pending = pool.submit(load, days[0])
        try:
            for index, day in enumerate(days):
                batch, error = pending.result()
                if index + 1 < len(days):
                    pending = pool.submit(load, days[index + 1])
                if error is not None:
                    fail(day, error)
                    continue
                assert batch is not None
                if batch.table is None:
                    log.info("%s: %s kept: %s", source.name, day, batch.skipped)
                    result.days.append({"day": day.isoformat(), "rows": 0, "kept": batch.skipped})
                    continue
                try:
                    outcome = store.write_day(source.name, day, batch.table, run_id, delivery=batch.delivery)
                except StoreDataError as exc:  # a value the database refused: this day only
                    fail(day, CostDataError(source.name, exc.field, exc.problem, location=batch.delivery))
                    continue
                log.info("%s: %s: %d rows (%s)", source.name, day, outcome.rows, outcome.action)
                entry: dict[str, Any] = {"day": day.isoformat(), "rows": outcome.rows, "action": outcome.action}
                if batch.delivery:
                    entry["delivery"] = batch.delivery
                result.days.append(entry)
        except Exception as exc:
            pending.cancel()
            store.finish_run(run_id, "failed", result.rows, len(failed_days), f"{type(exc).__name__}: {exc}")
            raise
    if failures:
        error = IngestError(source.name, failures, failed_days, result)
        store.finish_run(run_id, "partial", result.rows, len(failed_days), str(error))
        raise error
    store.finish_run(run_id, "succeeded", result.rows, 0)
    return result
