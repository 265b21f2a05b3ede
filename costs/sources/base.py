"""The one small interface every cost source implements: "cost rows for [start, end)", and per day as columns.

Days are UTC calendar days; ``end`` is exclusive, like Cost Explorer's ``End`` and FOCUS's ``ChargePeriodEnd``.
A source that cannot run here (no credentials, no table or scope configured) says why in ``unavailable()``; the
caller then skips it instead of failing.

``batch(day)`` is what ingestion calls: the day's rows as an Arrow table in the store's schema (see
``costs.columnar``), or a reason to leave the stored day as it is. The default builds it from ``rows()``
(connectors of aggregated APIs, a few thousand rows a day); export files override it with a columnar reader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from costs.focus import CostDataError, CostRow, day_start, validate

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class DayBatch:
    """One day of a source: its rows in the store's schema, or why the stored day is kept as it is."""

    day: date
    table: pa.Table | None
    skipped: str | None = None  # e.g. "no delivery covers 2026-11-21": nothing is written, nothing deleted
    delivery: str | None = None  # which delivery (files) the rows come from


class CostSource(ABC):
    """A provider of FOCUS-aligned cost rows. ``name`` is the configured source name (``x_source`` in the store)."""

    #: FOCUS ProviderName the source reports for (informational; rows carry their own).
    provider: str = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def rows(self, start: date, end: date) -> Iterable[CostRow]:
        """Every charge whose ChargePeriodStart lies in [start, end) (UTC days)."""

    def batch(self, day: date) -> DayBatch:
        """The day's rows, checked, as a table in the store's schema (``CostDataError`` names a bad field)."""
        from costs.columnar import from_rows

        low, high = day_start(day), day_start(day + timedelta(days=1))
        return DayBatch(day, from_rows(_inside(validate(row, self.name), self.name, low, high)
                                       for row in self.rows(day, day + timedelta(days=1))))

    def unavailable(self) -> str | None:
        """Why this source cannot be read here (e.g. no credentials), or None when it can."""
        return None

    def latest_day(self) -> date | None:
        """The newest day with data, for sources that know it without a query (files); None otherwise."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _inside(row: CostRow, source: str, low: datetime, high: datetime) -> CostRow:
    if not low <= row.charge_period_start < high:
        raise CostDataError(source, "ChargePeriodStart", f"{row.charge_period_start} is outside the requested day "
                            f"{low.date()} (the source returned a row it was not asked for)")
    return row
