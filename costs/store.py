"""The cost store: SQLAlchemy 2 Core tables in FOCUS column names, migrated by Alembic, idempotent bulk upserts.

Where: ``MLEDGE_COST_DB_URL`` (e.g. ``postgresql+psycopg2://user@host/db``), else ``sqlite:///$MLEDGE_HOME/costs.db``.
Opening a store runs ``alembic upgrade head`` programmatically (no alembic.ini), under a lock so that parallel
Airflow tasks do not race to create the tables.

Natural key: ``(x_source, x_row_key)``, where ``x_row_key`` is the charge period's start (YYYYMMDDHHMM, for index
locality) and a digest of everything that identifies a charge (provider, account, period, category, description,
service, region, resource, SKU, unit, tags, site) and none of its amounts. Rows of one batch that share a key
are summed first (a database upsert cannot touch one row twice in a statement). ``write_day`` upserts a source's
day and then deletes that day's rows the same ingestion run did not write (a charge that disappeared from a
re-issued export), all in one transaction: re-running a day neither duplicates nor loses a row.

Bulk paths, chosen by database: SQLite, one ``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE`` with the
parameters already in storage form; PostgreSQL with psycopg2, ``COPY`` (text format, built by one join per row)
into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``; PostgreSQL with another driver,
SQLAlchemy's executemany.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from costs.dbtypes import Money, to_sqlite_units
from costs.focus import COLUMNS, CostDataError, CostRow
from mledge.db.migrate import upgrade

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DB_URL_ENV = "MLEDGE_COST_DB_URL"
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

cost_rows = Table(
    "cost_rows",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("x_source", String(200), nullable=False),
    Column("x_row_key", String(48), nullable=False),
    Column("BilledCost", Money(), nullable=False),
    Column("EffectiveCost", Money(), nullable=False),
    Column("ListCost", Money()),
    Column("ContractedCost", Money()),
    Column("BillingCurrency", String(3), nullable=False),
    Column("BillingAccountId", String(200), nullable=False),
    Column("BillingAccountName", String(400)),
    Column("BillingPeriodStart", DateTime()),
    Column("BillingPeriodEnd", DateTime()),
    Column("ChargePeriodStart", DateTime(), nullable=False),
    Column("ChargePeriodEnd", DateTime(), nullable=False),
    Column("ChargeCategory", String(20), nullable=False),
    Column("ChargeClass", String(20)),
    Column("ChargeDescription", Text()),
    Column("PricingQuantity", Money()),
    Column("PricingUnit", String(100)),
    Column("ProviderName", String(100), nullable=False),
    Column("PublisherName", String(200)),
    Column("InvoiceIssuerName", String(200)),
    Column("ServiceCategory", String(100)),
    Column("ServiceName", String(300), nullable=False),
    Column("RegionId", String(100)),
    Column("ResourceId", Text()),
    Column("SkuId", String(300)),
    Column("SubAccountId", String(200)),
    Column("Tags", Text()),
    Column("x_project", String(200)),
    Column("x_site", String(100)),
    Column("x_estimated", Boolean(), nullable=False, default=False),
    Column("x_ingestion_run", Integer()),
    UniqueConstraint("x_source", "x_row_key", name="uq_cost_rows_natural_key"),
    Index("ix_cost_rows_source_period", "x_source", "ChargePeriodStart"),
    Index("ix_cost_rows_project_period", "x_project", "ChargePeriodStart"),
)

ingestion_runs = Table(
    "ingestion_runs",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("source", String(200), nullable=False),
    Column("window_start", Date(), nullable=False),
    Column("window_end", Date(), nullable=False),
    Column("started_at", DateTime(), nullable=False),
    Column("finished_at", DateTime()),
    Column("status", String(20), nullable=False),  # running, succeeded, partial, failed
    Column("rows_written", Integer(), nullable=False, default=0),
    Column("days_failed", Integer(), nullable=False, default=0),
    Column("message", Text()),
)

cost_quarantine = Table(
    "cost_quarantine",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("x_source", String(200), nullable=False),
    Column("day", Date(), nullable=False),
    Column("field", String(200), nullable=False),
    Column("problem", Text(), nullable=False),
    Column("location", Text()),
    Column("record", Text()),
    Column("x_ingestion_run", Integer()),
    Column("created_at", DateTime(), nullable=False),
)

price_offers = Table(
    "price_offers",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("provider", String(20), nullable=False),
    Column("region", String(100), nullable=False),
    Column("instance_type", String(200), nullable=False),
    Column("vcpu", Integer(), nullable=False),
    Column("memory_gib", Float(), nullable=False),  # a size, not money
    Column("gpu_count", Integer(), nullable=False),
    Column("gpu_model", String(50)),
    Column("usd_per_hour", Money(), nullable=False),
    Column("as_of", Date()),  # None: a snapshot price whose date is unknown
    Column("source", Text(), nullable=False),
    UniqueConstraint("provider", "region", "instance_type", name="uq_price_offers_offer"),
)

# Storage order of a cost row's values (after id): FOCUS names and extras, keyed by the CostRow attribute.
_VALUE_COLUMNS = [c for c in cost_rows.columns if c.name not in ("id",)]
_VALUE_NAMES = [c.name for c in _VALUE_COLUMNS]
_ATTRIBUTE_OF = {column: attribute for attribute, column in COLUMNS.items()}
_AMOUNT_INDEXES = [_VALUE_NAMES.index(n) for n in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost",
                                                  "PricingQuantity")]
_KEY_FIELDS = (
    "provider_name", "billing_account_id", "sub_account_id", "charge_period_start", "charge_period_end",
    "charge_category", "charge_class", "charge_description", "service_name", "region_id", "resource_id", "sku_id",
    "pricing_unit", "x_site",
)


def default_url(home: Path) -> str:
    """The store's URL: ``MLEDGE_COST_DB_URL`` or SQLite under MLEDGE_HOME."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'costs.db'}"


def _tags_json(tags: dict[str, str]) -> str | None:
    return json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False) if tags else None


def _stamp_text(value: datetime | None) -> str:
    """A timestamp as the key digest reads it (and as SQLAlchemy's SQLite DateTime stores it)."""
    return "" if value is None else value.isoformat(sep=" ", timespec="microseconds")


def _key_text(row: CostRow, start: str, end: str, tags_json: str | None) -> str:
    # Everything that identifies a charge, none of its amounts; "" stands for null.
    return (f"{row.provider_name}\x1f{row.billing_account_id}\x1f{row.sub_account_id or ''}\x1f{start}\x1f{end}"
            f"\x1f{row.charge_category}\x1f{row.charge_class or ''}\x1f{row.charge_description or ''}"
            f"\x1f{row.service_name}\x1f{row.region_id or ''}\x1f{row.resource_id or ''}\x1f{row.sku_id or ''}"
            f"\x1f{row.pricing_unit or ''}\x1f{row.x_site or ''}\x1f{tags_json or ''}")


def row_key(row: CostRow, tags_json: str | None) -> str:
    """The natural key of one row: its charge period's start (YYYYMMDDHHMM) and a digest of what identifies the
    charge (none of its amounts). The time prefix keeps a day's keys together in the unique index, so that
    ingesting a day touches a few index pages instead of random ones all over a large index."""
    start = _stamp_text(row.charge_period_start)
    text = _key_text(row, start, _stamp_text(row.charge_period_end), tags_json)
    return _key_prefix(start) + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _key_prefix(start: str) -> str:
    # "2026-11-01 00:00:00.000000" -> "202611010000"
    return start[0:4] + start[5:7] + start[8:10] + start[11:13] + start[14:16]


def _add(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class CostStore:
    """One cost database. ``CostStore(url)`` migrates it to the newest schema on first use."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 120}  # parallel tasks wait for the writer instead of failing
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()

    # --- schema ----------------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        upgrade(self.engine, MIGRATIONS)

    # --- ingestion runs --------------------------------------------------------------------------------------

    def begin_run(self, source: str, start, end) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(ingestion_runs.insert().values(
                source=source, window_start=start, window_end=end, started_at=_now(), status="running",
                rows_written=0, days_failed=0,
            ))
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, rows_written: int, days_failed: int,
                   message: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(ingestion_runs).where(ingestion_runs.c.id == run_id).values(
                finished_at=_now(), status=status, rows_written=rows_written, days_failed=days_failed,
                message=message,
            ))

    def quarantine(self, source: str, day, error: CostDataError, run_id: int | None) -> None:
        """Keep what was wrong (and the offending record, when known) instead of dropping it silently."""
        record = json.dumps(error.record, default=str, sort_keys=True) if error.record is not None else None
        with self.engine.begin() as conn:
            conn.execute(cost_quarantine.insert().values(
                x_source=source, day=day, field=error.field, problem=error.problem, location=error.location,
                record=record, x_ingestion_run=run_id, created_at=_now(),
            ))

    def quarantined(self, source: str | None = None) -> list[dict]:
        query = select(cost_quarantine).order_by(cost_quarantine.c.id)
        if source:
            query = query.where(cost_quarantine.c.x_source == source)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # --- rows ------------------------------------------------------------------------------------------------

    def write_day(self, source: str, start: datetime, end: datetime, rows: Iterable[CostRow], run_id: int) -> int:
        """Upsert a source's rows for [start, end) and drop that window's rows this run did not write; one
        transaction. Returns the number of distinct rows written."""
        return self.write_prepared(source, start, end, self.prepare(rows, source, run_id), run_id)

    def write_prepared(self, source: str, start: datetime, end: datetime, values: list[tuple], run_id: int) -> int:
        """``write_day`` for rows already through ``prepare`` (ingestion prepares the next day meanwhile)."""
        with self.engine.begin() as conn:
            self._upsert(conn, values)
            conn.execute(delete(cost_rows).where(
                cost_rows.c.x_source == source,
                cost_rows.c.ChargePeriodStart >= start,
                cost_rows.c.ChargePeriodStart < end,
                cost_rows.c.x_ingestion_run != run_id,
            ))
        return len(values)

    def replace_resources(self, source: str, resource_prefix: str, rows: Iterable[CostRow],
                          run_id: int | None = None) -> int:
        """Replace every row of ``source`` whose ResourceId starts with ``resource_prefix`` (e.g. all sites of
        one Flower run) by ``rows``, in one transaction."""
        values = self.prepare(rows, source, run_id)
        with self.engine.begin() as conn:
            conn.execute(delete(cost_rows).where(cost_rows.c.x_source == source,
                                                 cost_rows.c.ResourceId.startswith(resource_prefix, autoescape=True)))
            self._upsert(conn, values)
        return len(values)

    def prepare(self, rows: Iterable[CostRow], source: str, run_id: int | None) -> list[tuple]:
        """Rows as parameter tuples in storage order and form, one per natural key (duplicates summed).

        The hot path of ingestion: timestamps and tag JSON repeat across rows and are converted once each.
        """
        sqlite = self.dialect == "sqlite"
        stamps: dict[datetime | None, str] = {None: ""}
        prefixes: dict[str, str] = {}
        tag_texts: dict[tuple, str | None] = {(): None}
        blake2b = hashlib.blake2b
        first: dict[str, tuple[CostRow, str | None, str, str]] = {}
        duplicates: dict[str, list[CostRow]] = {}
        for row in rows:
            tags = row.tags
            items = tuple(tags.items()) if tags else ()
            tags_json = tag_texts.get(items, "")
            if tags_json == "":
                tags_json = tag_texts[items] = _tags_json(tags)
            start = stamps.get(row.charge_period_start)
            if start is None:
                start = stamps[row.charge_period_start] = _stamp_text(row.charge_period_start)
            end = stamps.get(row.charge_period_end)
            if end is None:
                end = stamps[row.charge_period_end] = _stamp_text(row.charge_period_end)
            prefix = prefixes.get(start)
            if prefix is None:
                prefix = prefixes[start] = _key_prefix(start)
            key = prefix + blake2b(_key_text(row, start, end, tags_json).encode(), digest_size=16).hexdigest()
            if key in first:
                duplicates.setdefault(key, []).append(row)
            else:
                first[key] = (row, tags_json, start, end)

        # Storage form: SQLite gets integer amount units and its DateTime text; PostgreSQL's COPY gets text
        # throughout; any other driver gets Decimals and datetimes for SQLAlchemy to bind.
        as_text = self._copies
        money = to_sqlite_units if sqlite else (str if as_text else _same)
        stamp_as_text = sqlite or as_text
        flag = ("f", "t") if as_text else (False, True)
        run = str(run_id) if as_text and run_id is not None else run_id

        def stamp(value: datetime | None) -> str | datetime | None:
            if value is None or not stamp_as_text:
                return value
            text = stamps.get(value)
            if text is None:
                text = stamps[value] = _stamp_text(value)
            return text

        out = []
        for key, (row, tags_json, start, end) in first.items():
            billed, effective, listed, contracted, quantity = (row.billed_cost, row.effective_cost, row.list_cost,
                                                              row.contracted_cost, row.pricing_quantity)
            for other in duplicates.get(key, ()):
                billed = _add(billed, other.billed_cost)
                effective = _add(effective, other.effective_cost)
                listed = _add(listed, other.list_cost)
                contracted = _add(contracted, other.contracted_cost)
                quantity = _add(quantity, other.pricing_quantity)
            out.append((
                source, key, money(billed), money(effective),
                None if listed is None else money(listed), None if contracted is None else money(contracted),
                row.billing_currency, row.billing_account_id, row.billing_account_name,
                stamp(row.billing_period_start), stamp(row.billing_period_end),
                start if stamp_as_text else row.charge_period_start, end if stamp_as_text else row.charge_period_end,
                row.charge_category, row.charge_class, row.charge_description,
                None if quantity is None else money(quantity), row.pricing_unit,
                row.provider_name, row.publisher_name, row.invoice_issuer_name, row.service_category,
                row.service_name, row.region_id, row.resource_id, row.sku_id, row.sub_account_id, tags_json,
                row.x_project, row.x_site, flag[bool(row.x_estimated)], run,
            ))
        return out

    @property
    def _copies(self) -> bool:
        """Whether batches go through PostgreSQL's COPY (psycopg2), which takes text."""
        return self.dialect == "postgresql" and self.engine.driver == "psycopg2"

    def _upsert(self, conn: Connection, values: list[tuple]) -> None:
        if not values:
            return
        if self.dialect == "sqlite":
            conn.exec_driver_sql(_sqlite_upsert_sql(), values)
        elif self._copies:
            _pg_copy_upsert(conn, values)
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            # Generic path: SQLAlchemy binds Money itself, so hand it Decimals (prepare() kept them for non-SQLite).
            statement = pg_insert(cost_rows)
            statement = statement.on_conflict_do_update(
                index_elements=["x_source", "x_row_key"],
                set_={n: statement.excluded[n] for n in _VALUE_NAMES if n not in ("x_source", "x_row_key")},
            )
            conn.execute(statement, [dict(zip(_VALUE_NAMES, v, strict=True)) for v in values])
        else:
            raise NotImplementedError(f"the cost store supports SQLite and PostgreSQL, not {self.dialect}")

    # --- reading ---------------------------------------------------------------------------------------------

    def count(self, source: str | None = None) -> int:
        query = select(func.count()).select_from(cost_rows)
        if source:
            query = query.where(cost_rows.c.x_source == source)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def totals(self, source: str | None = None) -> dict[str, Decimal]:
        """Exact sums of the four cost columns (Decimal; zero for an empty store)."""
        names = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
        query = select(*[func.sum(cost_rows.c[n]).label(n) for n in names])
        if source:
            query = query.where(cost_rows.c.x_source == source)
        with self.engine.connect() as conn:
            result = conn.execute(query).one()
        return {n: (getattr(result, n) if getattr(result, n) is not None else Decimal(0)) for n in names}

    def latest_charge_day(self, source: str):
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(cost_rows.c.ChargePeriodStart))
                                 .where(cost_rows.c.x_source == source)).scalar_one()
        return value.date() if value else None


def _same(value: Decimal) -> Decimal:
    return value


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (reports, the UI) never block the ingesting writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps the file consistent
    # The default page cache (2 MB) makes upserts into a million-row table wait on disk reads of index pages.
    cursor.execute("PRAGMA cache_size=-262144")  # up to 256 MiB, used only as the database grows
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


_SQLITE_UPSERT: str | None = None


def _sqlite_upsert_sql() -> str:
    """``INSERT ... ON CONFLICT (natural key) DO UPDATE`` compiled once for SQLite's qmark parameters."""
    global _SQLITE_UPSERT
    if _SQLITE_UPSERT is None:
        from sqlalchemy.dialects import sqlite
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(cost_rows).values({n: bindparam(n) for n in _VALUE_NAMES})
        statement = statement.on_conflict_do_update(
            index_elements=["x_source", "x_row_key"],
            set_={n: statement.excluded[n] for n in _VALUE_NAMES if n not in ("x_source", "x_row_key")},
        )
        compiled = statement.compile(dialect=sqlite.dialect())
        if list(compiled.positiontup) != _VALUE_NAMES:  # parameter order must be our tuple order
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
        _SQLITE_UPSERT = str(compiled)
    return _SQLITE_UPSERT


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(values: list[tuple]) -> str:
    """Rows (all text or None) in COPY's text format: tab-separated, \\N for null, backslash escapes."""
    columns = len(values[0])
    lines = []
    for row in values:
        line = "\t".join(["\\N" if v is None else v for v in row])
        # Fast path: a value that needs escaping shows as an extra tab, a backslash beyond the \\N markers, or a
        # newline or CR in the line; only then is each value escaped.
        if (line.count("\t") != columns - 1 or line.count("\\") != row.count(None) or "\n" in line
                or "\r" in line):
            line = "\t".join(["\\N" if v is None else v.translate(_COPY_ESCAPES) for v in row])
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def _pg_copy_upsert(conn: Connection, values: list[tuple]) -> None:
    """COPY the batch into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO UPDATE."""
    quoted = ", ".join(f'"{n}"' for n in _VALUE_NAMES)
    updates = ", ".join(f'"{n}" = EXCLUDED."{n}"' for n in _VALUE_NAMES if n not in ("x_source", "x_row_key"))
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        # Same column types, no id, no constraints or indexes; lives as long as the pooled session.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS cost_rows_incoming ON COMMIT DELETE ROWS "
            f"AS SELECT {quoted} FROM cost_rows WITH NO DATA"
        )
        cursor.execute("TRUNCATE cost_rows_incoming")
        cursor.copy_expert(f"COPY cost_rows_incoming ({quoted}) FROM STDIN", io.StringIO(_copy_text(values)))
        cursor.execute(
            f"INSERT INTO cost_rows ({quoted}) SELECT {quoted} FROM cost_rows_incoming "
            f"ON CONFLICT (x_source, x_row_key) DO UPDATE SET {updates}"
        )
    finally:
        cursor.close()
