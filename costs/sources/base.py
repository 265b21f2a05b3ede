"""The one small interface every cost source implements: "cost rows for [start, end)".

Days are UTC calendar days; ``end`` is exclusive, like Cost Explorer's ``End`` and FOCUS's ``ChargePeriodEnd``.
A source that cannot run here (no credentials, no table or scope configured) says why in ``unavailable()``; the
caller then skips it instead of failing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import date

from costs.focus import CostRow


class CostSource(ABC):
    """A provider of FOCUS-aligned cost rows. ``name`` is the configured source name (``x_source`` in the store)."""

    #: FOCUS ProviderName the source reports for (informational; rows carry their own).
    provider: str = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def rows(self, start: date, end: date) -> Iterable[CostRow]:
        """Every charge whose ChargePeriodStart lies in [start, end) (UTC days)."""

    def unavailable(self) -> str | None:
        """Why this source cannot be read here (e.g. no credentials), or None when it can."""
        return None

    def latest_day(self) -> date | None:
        """The newest day with data, for sources that know it without a query (files); None otherwise."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
