"""Column types of the cost store that keep amounts exact on every database.

PostgreSQL has an exact ``numeric``. SQLite has none: a NUMERIC column there stores binary floats, and SUM() adds
floats. ``Money`` therefore stores an amount on SQLite as a 64-bit integer count of 1e-10 units (so SUM() stays
exact; SQLite raises "integer overflow" past about 922 million rather than rounding) and as ``NUMERIC(30, 10)``
elsewhere. Both read back as ``Decimal`` with 10 places.

``Quantity`` (quantities and unit prices: request counts in the billions, prices of a billionth of a dollar) is
``NUMERIC(38, 18)`` on PostgreSQL and the exact decimal text on SQLite (SQLite never adds them up for us).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import BigInteger, Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from costs.focus import AMOUNT_PLACES, QUANTITY_PLACES

_SCALE = Decimal(10**AMOUNT_PLACES)


class Money(TypeDecorator[Decimal]):
    """A Decimal amount with ``AMOUNT_PLACES`` places: NUMERIC(30, 10), or scaled BIGINT on SQLite."""

    impl = Numeric(30, AMOUNT_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(30, AMOUNT_PLACES, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal | int):
            raise TypeError(f"Money takes Decimal or int, not {type(value).__name__}")
        if dialect.name == "sqlite":
            return to_sqlite_units(Decimal(value))
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return from_sqlite_units(value)
        return Decimal(value)


def to_sqlite_units(amount: Decimal) -> int:
    """An amount as SQLite stores it: integer units of 1e-10 (rounded half away from zero past 10 places)."""
    scaled = amount * _SCALE
    units = int(scaled)  # exact for amounts with at most 10 places, the usual case (the hot path of ingestion)
    if units != scaled:
        units = int(scaled.to_integral_value(rounding=ROUND_HALF_UP))
    return units


def from_sqlite_units(units: int | float | str) -> Decimal:
    """The inverse of ``to_sqlite_units``; SUM() over an empty set gives None, handled by the caller."""
    return Decimal(int(units)).scaleb(-AMOUNT_PLACES)


_QUANTITY_QUANTUM = Decimal(1).scaleb(-QUANTITY_PLACES)


class Quantity(TypeDecorator[Decimal]):
    """A Decimal quantity or unit price with ``QUANTITY_PLACES`` places: NUMERIC(38, 18), or its text on SQLite."""

    impl = Numeric(38, QUANTITY_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(60))
        return dialect.type_descriptor(Numeric(38, QUANTITY_PLACES, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal | int):
            raise TypeError(f"Quantity takes Decimal or int, not {type(value).__name__}")
        if dialect.name == "sqlite":
            return quantity_text(Decimal(value))
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value) if not isinstance(value, Decimal) else value


def quantity_text(value: Decimal) -> str:
    """A quantity as SQLite keeps it: the decimal with QUANTITY_PLACES places (as Arrow writes decimal128(38, 18))."""
    return format(value.quantize(_QUANTITY_QUANTUM, rounding=ROUND_HALF_UP), "f")
