"""The cost store: SQLAlchemy 2 Core tables in FOCUS column names, migrated by Alembic, columnar day writes.

Where: ``MLEDGE_COST_DB_URL`` (``postgresql+psycopg://user@host/db``; psycopg2 URLs work too), else
``sqlite:///$MLEDGE_HOME/costs.db``. Opening a store runs ``alembic upgrade head`` programmatically (no
alembic.ini), under a lock so that parallel Airflow tasks do not race to create the tables.

``cost_rows`` keeps every FOCUS 1.0-1.2 column (57) plus ``x_`` extras: project, site, source, estimate flag,
FOCUS version and delivery read, ingestion run. Natural key: ``(x_source, x_row_key)``, see ``costs.columnar``.

``write_day`` writes one source's day from an Arrow table in one transaction:

- the day's fingerprint (``cost_days``) and stored row count equal the new ones: nothing is written
  ("unchanged"; a daily re-read of a trailing window mostly finds this);
- nothing is stored for the day: the rows go straight in ("inserted");
- otherwise the rows go into a temporary staging table, then one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``
  rewrites only the rows whose values changed, and the day's rows whose key is not in the batch (a charge gone
  from a re-issued export) are deleted ("replaced").

Bulk paths, each in one transaction of an ADBC connection of the store's own: PostgreSQL through
``adbc-driver-postgresql`` (a binary COPY written from the Arrow arrays in C: decimals go as NUMERIC, nothing is
formatted as text or parsed by the server), SQLite through ADBC's SQLite driver (``adbc_ingest`` binds Arrow
arrays in C), with amounts as integer 1e-10 units and timestamps as the text SQLAlchemy reads. Without the
PostgreSQL ADBC driver: ``COPY ... FROM STDIN (FORMAT csv)`` of the CSV Arrow writes in C++ (psycopg 3, or
psycopg2's ``copy_expert``) on SQLAlchemy's connection. Other databases (and in-memory SQLite) go through
SQLAlchemy's executemany, which is slow but the same.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from costs.dbtypes import Money, Quantity
from costs.focus import (
    ALL_FOCUS_COLUMNS,
    MONEY_COLUMNS,
    QUANTITY_COLUMNS,
    TIMESTAMP_COLUMNS,
    CostDataError,
    CostRow,
    day_start,
)
from mledge.db.migrate import upgrade

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DB_URL_ENV = "MLEDGE_COST_DB_URL"
_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

# Text columns of 0001 keep their sizes; columns added later are TEXT.
_SIZES = {"BillingCurrency": 3, "BillingAccountId": 200, "BillingAccountName": 400, "ChargeCategory": 20,
          "ChargeClass": 20, "PricingUnit": 100, "ProviderName": 100, "PublisherName": 200, "InvoiceIssuerName": 200,
          "ServiceCategory": 100, "ServiceName": 300, "RegionId": 100, "SkuId": 300, "SubAccountId": 200}
_NOT_NULL = {"BilledCost", "EffectiveCost", "BillingCurrency", "BillingAccountId", "ChargePeriodStart",
             "ChargePeriodEnd", "ChargeCategory", "ProviderName", "ServiceName"}
# Storage order of 0001, then what 0002 added.
_ORDER_0001 = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency", "BillingAccountId",
               "BillingAccountName", "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
               "ChargeCategory", "ChargeClass", "ChargeDescription", "PricingQuantity", "PricingUnit", "ProviderName",
               "PublisherName", "InvoiceIssuerName", "ServiceCategory", "ServiceName", "RegionId", "ResourceId",
               "SkuId", "SubAccountId", "Tags")
ADDED_0002 = tuple(c for c in ALL_FOCUS_COLUMNS if c not in _ORDER_0001)


def focus_column_type(name: str) -> Any:
    """The SQL type of a FOCUS column in the store."""
    if name in MONEY_COLUMNS:
        return Money()
    if name in QUANTITY_COLUMNS:
        return Quantity()
    if name in TIMESTAMP_COLUMNS:
        return DateTime()
    return String(_SIZES[name]) if name in _SIZES else Text()


cost_rows = Table(
    "cost_rows",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("x_source", String(200), nullable=False),
    Column("x_row_key", String(48), nullable=False),
    *[Column(name, focus_column_type(name), nullable=name not in _NOT_NULL) for name in _ORDER_0001],
    Column("x_project", String(200)),
    Column("x_site", String(100)),
    Column("x_estimated", Boolean(), nullable=False, default=False),
    Column("x_ingestion_run", Integer()),
    *[Column(name, focus_column_type(name)) for name in ADDED_0002],
    Column("x_focus_version", String(8)),
    Column("x_delivery", Text()),
    UniqueConstraint("x_source", "x_row_key", name="uq_cost_rows_natural_key"),
    Index("ix_cost_rows_source_period", "x_source", "ChargePeriodStart"),
    Index("ix_cost_rows_project_period", "x_project", "ChargePeriodStart"),
)

# What is stored per source and day: the fingerprint of its content, so that an unchanged day is not rewritten.
cost_days = Table(
    "cost_days",
    metadata,
    Column("x_source", String(200), primary_key=True),
    Column("day", Date(), primary_key=True),
    Column("rows", Integer(), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("x_ingestion_run", Integer()),
    Column("x_delivery", Text()),
    Column("written_at", DateTime(), nullable=False),
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

# Each federated run's cost split among its sites (costs.sharing): one row per run and site.
cost_shares = Table(
    "cost_shares",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("flower_run_id", String(100), nullable=False),
    Column("x_project", String(200), nullable=False),
    Column("site", String(100), nullable=False),
    Column("day", Date(), nullable=False),  # the run's day (its training cost rows' ChargePeriodStart)
    Column("rule", String(40), nullable=False),  # contribution (Shapley), leave_one_out, data_size, equal
    Column("x_cost_share", Money(), nullable=False),  # the fraction of the run's cost this site bears, 0..1
    Column("contribution", Quantity()),  # the site's contribution score before normalising (rule's units)
    Column("examples", Integer()),  # held-out examples the site scored (its data size)
    Column("details", Text()),  # JSON: the inputs and settings the share was computed from
    Column("computed_at", DateTime(), nullable=False),
    UniqueConstraint("flower_run_id", "site", name="uq_cost_shares_run_site"),
    Index("ix_cost_shares_project_day", "x_project", "day"),
)

# Storage order of a cost row's values (after id).
VALUE_NAMES = [c.name for c in cost_rows.columns if c.name != "id"]
_COMPARED = [n for n in VALUE_NAMES if n not in ("x_source", "x_row_key", "x_ingestion_run")]


class StoreDataError(Exception):
    """The database refused a day's values (a text too long, a constraint): that day fails, others go on."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class DayOutcome:
    rows: int
    action: str  # inserted, replaced, unchanged


def default_url(home: Path) -> str:
    """The store's URL: ``MLEDGE_COST_DB_URL`` or SQLite under MLEDGE_HOME."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'costs.db'}"


class CostStore:
    """One cost database. ``CostStore(url)`` migrates it to the newest schema on first use."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 120}  # parallel tasks wait for the writer instead of failing
        self.engine: Engine = create_engine(url, **kwargs)
        self._adbc_connection: Any = None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        if self._adbc_connection is not None:
            self._adbc_connection.close()
            self._adbc_connection = None
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

    def write_day(self, source: str, day: date, table: Any, run_id: int, *, delivery: str | None = None) -> DayOutcome:
        """Make the stored rows of ``source`` on ``day`` exactly ``table``'s (the store's Arrow schema plus
        ``x_row_key``, keys unique), in one transaction; see the module's description."""
        from costs.columnar import fingerprint

        table = _bookkeeping(table, source, run_id)
        digest = fingerprint(table)
        low, high = day_start(day), day_start(day + timedelta(days=1))
        if self._adbc_target is not None:
            return self._write_day_adbc(source, day, low, high, table, digest, run_id, delivery)
        try:
            with self.engine.begin() as conn:
                count = self._stored(conn, source, low, high)
                if self._unchanged(conn, source, day, digest, count, table.num_rows):
                    return DayOutcome(table.num_rows, "unchanged")
                if count == 0:
                    self._insert(conn, table, cost_rows.name)
                    action = "inserted"
                else:
                    self._replace(conn, table, source, low, high)
                    action = "replaced"
                self._record_day(conn, source, day, table.num_rows, digest, run_id, delivery)
        except self._refusals as exc:
            raise StoreDataError("(database)", _first_line(exc)) from None
        return DayOutcome(table.num_rows, action)

    def replace_resources(self, source: str, resource_prefix: str, rows: Iterable[CostRow],
                          run_id: int | None = None) -> int:
        """Replace every row of ``source`` whose ResourceId starts with ``resource_prefix`` (e.g. all sites of
        one Flower run) by ``rows``, in one transaction (a handful of rows: SQLAlchemy's executemany)."""
        from costs.columnar import from_rows, merge_duplicates, row_keys

        table = from_rows(rows)
        if table.num_rows:
            table, keys = merge_duplicates(table, row_keys(table))
            table = table.append_column("x_row_key", keys)
        with self.engine.begin() as conn:
            conn.execute(delete(cost_rows).where(cost_rows.c.x_source == source,
                                                 cost_rows.c.ResourceId.startswith(resource_prefix, autoescape=True)))
            if table.num_rows:
                conn.execute(cost_rows.insert(), _bookkeeping(table, source, run_id).to_pylist())
        return table.num_rows

    # --- day writes ------------------------------------------------------------------------------------------

    @property
    def _adbc_target(self) -> str | None:
        """Where ADBC writes days: the SQLite file, or the PostgreSQL URI when its ADBC driver is installed (None:
        in-memory SQLite, another database, or no driver: SQLAlchemy's path)."""
        url = self.engine.url
        if self.dialect == "sqlite":
            return url.database if url.database and url.database != ":memory:" else None
        if self.dialect == "postgresql":
            try:
                import adbc_driver_postgresql  # noqa: F401
            except ImportError:
                return None
            return url.set(drivername="postgresql").render_as_string(hide_password=False)
        return None

    @property
    def _refusals(self) -> tuple[type[BaseException], ...]:
        from sqlalchemy.exc import DataError, IntegrityError

        dbapi = self.engine.dialect.dbapi
        return (DataError, IntegrityError, getattr(dbapi, "DataError", DataError),
                getattr(dbapi, "IntegrityError", IntegrityError))

    @staticmethod
    def _stored(conn: Connection, source: str, low: datetime, high: datetime) -> int:
        return int(conn.execute(select(func.count()).select_from(cost_rows).where(
            cost_rows.c.x_source == source, cost_rows.c.ChargePeriodStart >= low,
            cost_rows.c.ChargePeriodStart < high)).scalar_one())

    @staticmethod
    def _unchanged(conn: Connection, source: str, day: date, digest: str, count: int, rows: int) -> bool:
        stored = conn.execute(select(cost_days.c.rows, cost_days.c.fingerprint).where(
            cost_days.c.x_source == source, cost_days.c.day == day)).first()
        return stored is not None and stored.fingerprint == digest and stored.rows == count == rows

    def _record_day(self, conn: Connection, source: str, day: date, rows: int, digest: str, run_id: int,
                    delivery: str | None) -> None:
        values = {"x_source": source, "day": day, "rows": rows, "fingerprint": digest, "x_ingestion_run": run_id,
                  "x_delivery": delivery, "written_at": _now()}
        if self.dialect in ("sqlite", "postgresql"):
            from sqlalchemy.dialects import postgresql, sqlite

            insert = (sqlite if self.dialect == "sqlite" else postgresql).insert(cost_days).values(values)
            conn.execute(insert.on_conflict_do_update(
                index_elements=["x_source", "day"],
                set_={k: insert.excluded[k] for k in values if k not in ("x_source", "day")}))
            return
        conn.execute(delete(cost_days).where(cost_days.c.x_source == source, cost_days.c.day == day))
        conn.execute(cost_days.insert().values(values))

    def _insert(self, conn: Connection, table: Any, target: str) -> None:
        if self.dialect == "postgresql":
            _pg_copy(conn, table, target)
        else:
            conn.execute(cost_rows.insert() if target == cost_rows.name else Table(target, MetaData()).insert(),
                         table.to_pylist())

    def _replace(self, conn: Connection, table: Any, source: str, low: datetime, high: datetime) -> None:
        if self.dialect != "postgresql":  # generic: delete the day, insert it again
            conn.execute(delete(cost_rows).where(cost_rows.c.x_source == source, cost_rows.c.ChargePeriodStart >= low,
                                                 cost_rows.c.ChargePeriodStart < high))
            if table.num_rows:
                conn.execute(cost_rows.insert(), table.to_pylist())
            return
        quoted = ", ".join(f'"{n}"' for n in VALUE_NAMES)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            # Same column types, no id, no constraints or indexes; lives as long as the pooled session.
            cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS cost_rows_incoming ON COMMIT DELETE ROWS "
                           f"AS SELECT {quoted} FROM cost_rows WITH NO DATA")
        finally:
            cursor.close()
        _pg_copy(conn, table, "cost_rows_incoming")
        conn.exec_driver_sql(_upsert_sql("cost_rows_incoming", "IS DISTINCT FROM"))
        conn.exec_driver_sql(_delete_missing_sql("cost_rows_incoming", "%(source)s", "%(low)s", "%(high)s"),
                             {"source": source, "low": low, "high": high})

    def _write_day_adbc(self, source: str, day: date, low: datetime, high: datetime, table: Any, digest: str,
                        run_id: int, delivery: str | None) -> DayOutcome:
        """The day through ADBC (SQLite: Arrow arrays bound in C; PostgreSQL: binary COPY written from Arrow in
        C), in one transaction of ADBC's own connection."""
        import adbc_driver_manager

        sqlite = self.dialect == "sqlite"
        connection = self._adbc()

        def ph(i: int) -> str:
            return "?" if sqlite else f"${i}"

        if sqlite:
            staging = "temp.cost_rows_incoming"
            window = (source, _sqlite_stamp(low), _sqlite_stamp(high))
            day_key, written_at = day.isoformat(), _sqlite_stamp(_now())
            rows = _sqlite_form(table)
        else:
            staging = "cost_rows_incoming"
            window, day_key, written_at = (source, low, high), day, _now()
            rows = _postgres_form(table)
        cursor = connection.cursor()
        try:
            cursor.execute(f'SELECT count(*) FROM cost_rows WHERE x_source = {ph(1)} AND "ChargePeriodStart" >= '
                           f'{ph(2)} AND "ChargePeriodStart" < {ph(3)}', window)
            count = int(cursor.fetchone()[0])
            cursor.execute(f"SELECT rows, fingerprint FROM cost_days WHERE x_source = {ph(1)} AND day = {ph(2)}",
                           (source, day_key))
            stored = cursor.fetchone()
            if stored is not None and stored[1] == digest and stored[0] == count == table.num_rows:
                connection.adbc_connection.rollback()
                return DayOutcome(table.num_rows, "unchanged")
            if count == 0:
                if rows.num_rows:
                    cursor.adbc_ingest("cost_rows", rows, mode="append")
                action = "inserted"
            else:
                if sqlite:
                    cursor.execute("DROP TABLE IF EXISTS temp.cost_rows_incoming")
                    cursor.adbc_ingest("cost_rows_incoming", rows, mode="create", temporary=True)
                else:  # same column types, no id, constraints or indexes; emptied at each commit
                    quoted = ", ".join(f'"{n}"' for n in VALUE_NAMES)
                    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS cost_rows_incoming ON COMMIT DELETE ROWS "
                                   f"AS SELECT {quoted} FROM cost_rows WITH NO DATA")
                    if rows.num_rows:
                        cursor.adbc_ingest("cost_rows_incoming", rows, mode="append", temporary=True)
                cursor.execute(_upsert_sql(staging, "IS NOT" if sqlite else "IS DISTINCT FROM"))
                cursor.execute(_delete_missing_sql(staging, ph(1), ph(2), ph(3)), window)
                if sqlite:
                    cursor.execute("DROP TABLE temp.cost_rows_incoming")
                action = "replaced"
            cursor.execute(
                "INSERT INTO cost_days (x_source, day, rows, fingerprint, x_ingestion_run, x_delivery, written_at) "
                f"VALUES ({', '.join(ph(i) for i in range(1, 8))}) ON CONFLICT (x_source, day) DO UPDATE SET "
                "rows = excluded.rows, fingerprint = excluded.fingerprint, x_ingestion_run = excluded.x_ingestion_run, "
                "x_delivery = excluded.x_delivery, written_at = excluded.written_at",
                (source, day_key, table.num_rows, digest, run_id, delivery, written_at))
            connection.adbc_connection.commit()
        except (adbc_driver_manager.IntegrityError, adbc_driver_manager.DataError,
                adbc_driver_manager.ProgrammingError) as exc:
            connection.adbc_connection.rollback()
            raise StoreDataError("(database)", _first_line(exc)) from None
        except BaseException:
            connection.adbc_connection.rollback()
            raise
        finally:
            cursor.close()
        return DayOutcome(table.num_rows, action)

    def _adbc(self):
        if self._adbc_connection is None:
            if self.dialect == "sqlite":
                import adbc_driver_sqlite.dbapi

                connection = adbc_driver_sqlite.dbapi.connect(self._adbc_target, autocommit=True)
                cursor = connection.cursor()
                cursor.execute("PRAGMA busy_timeout = 120000")  # parallel tasks wait for the writer
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("PRAGMA cache_size = -262144")
                cursor.execute("PRAGMA temp_store = MEMORY")
                cursor.close()
            else:
                import adbc_driver_postgresql.dbapi

                connection = adbc_driver_postgresql.dbapi.connect(self._adbc_target, autocommit=True)
            # Transactions from here on: commit and rollback go to the ADBC connection itself (the DB-API wrapper,
            # opened in autocommit mode so that the safety level could be set, would ignore them).
            connection.adbc_connection.set_autocommit(False)
            self._adbc_connection = connection
        return self._adbc_connection

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


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (reports, the UI) never block the ingesting writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps the file consistent
    # The default page cache (2 MB) makes upserts into a million-row table wait on disk reads of index pages.
    cursor.execute("PRAGMA cache_size=-262144")  # up to 256 MiB, used only as the database grows
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.execute("PRAGMA busy_timeout=120000")
    cursor.close()


def _bookkeeping(table: Any, source: str, run_id: int | None) -> Any:
    """The day's table with x_source and x_ingestion_run, columns in storage order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    columns = {name: table[name] for name in table.column_names}
    columns["x_source"] = pc.fill_null(pa.nulls(n, pa.string()), source)
    columns["x_ingestion_run"] = pa.nulls(n, pa.int64()) if run_id is None else pc.fill_null(
        pa.nulls(n, pa.int64()), run_id)
    return pa.table({name: columns[name] for name in VALUE_NAMES})


def _upsert_sql(staging: str, distinct: str) -> str:
    """One INSERT ... SELECT ... ON CONFLICT that rewrites only rows whose values changed."""
    quoted = ", ".join(f'"{n}"' for n in VALUE_NAMES)
    updates = ", ".join(f'"{n}" = excluded."{n}"' for n in VALUE_NAMES if n not in ("x_source", "x_row_key"))
    stored = ", ".join(f'cost_rows."{n}"' for n in _COMPARED)
    incoming = ", ".join(f'excluded."{n}"' for n in _COMPARED)
    return (f"INSERT INTO cost_rows ({quoted}) SELECT {quoted} FROM {staging} WHERE true "
            f"ON CONFLICT (x_source, x_row_key) DO UPDATE SET {updates} WHERE ({stored}) {distinct} ({incoming})")


def _delete_missing_sql(staging: str, source: str, low: str, high: str) -> str:
    """Delete the day's stored rows whose key the new batch does not have (a charge gone from a re-issue)."""
    # NOT IN: SQLite builds a transient index over the subquery (a correlated NOT EXISTS would scan the staging
    # table once per stored row); PostgreSQL hashes it.
    return (f'DELETE FROM cost_rows WHERE x_source = {source} AND "ChargePeriodStart" >= {low} AND '
            f'"ChargePeriodStart" < {high} AND x_row_key NOT IN (SELECT x_row_key FROM {staging})')


def _csv_bytes(table: Any) -> bytes:
    """Arrow's C++ CSV writer: decimals as exact text, naive timestamps as ISO text, null as an empty field."""
    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buffer.getvalue()


def _pg_copy(conn: Connection, table: Any, target: str) -> None:
    """COPY the table into ``target`` (psycopg 3's copy, or psycopg2's copy_expert), inside ``conn``'s transaction."""
    if table.num_rows == 0:
        return
    statement = f"COPY {target} ({', '.join(repr_ident(n) for n in table.column_names)}) FROM STDIN (FORMAT csv)"
    data = _csv_bytes(table)
    raw = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        if hasattr(cursor, "copy"):  # psycopg 3
            with cursor.copy(statement) as copy:
                view = memoryview(data)
                for offset in range(0, len(data), 1 << 22):
                    copy.write(view[offset:offset + (1 << 22)])
        else:  # psycopg2
            cursor.copy_expert(statement, io.BytesIO(data))
    finally:
        cursor.close()


def repr_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_stamp(value: datetime) -> str:
    """A timestamp as SQLAlchemy's SQLite DateTime stores it (so text comparisons order correctly)."""
    return value.isoformat(sep=" ", timespec="microseconds")


def _sqlite_form(table: Any) -> Any:
    """The table as SQLite keeps it: money as integer 1e-10 units, quantities as decimal text, timestamps as
    SQLAlchemy's text, booleans as 0/1."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from costs.columnar import by_distinct

    columns = []
    for name in table.column_names:
        column = table[name].combine_chunks()
        if name in MONEY_COLUMNS:
            column = _units(column, np, pa)
        elif name in QUANTITY_COLUMNS:  # unit prices repeat per SKU: each distinct value formatted once
            column = by_distinct(column, lambda values: values.cast(pa.string()))
        elif pa.types.is_timestamp(column.type):  # a day has few distinct hours
            column = by_distinct(column, lambda values: pc.strftime(values, "%Y-%m-%d %H:%M:%S"))
        elif pa.types.is_boolean(column.type):
            column = column.cast(pa.int64())
        columns.append(column)
    return pa.table(dict(zip(table.column_names, columns, strict=True)))


def _postgres_form(table: Any) -> Any:
    """The table as ADBC's binary COPY writes it into cost_rows' types (the run id as a 4-byte integer)."""
    import pyarrow as pa

    index = table.schema.get_field_index("x_ingestion_run")
    return table.set_column(index, "x_ingestion_run", table["x_ingestion_run"].cast(pa.int32()))


def _units(column: Any, np: Any, pa: Any) -> Any:
    """decimal128(38, 10) as int64 counts of 1e-10 (its unscaled value), refusing what does not fit in 64 bits."""
    if len(column) == 0:
        return pa.array([], pa.int64())
    words = np.frombuffer(column.buffers()[1], dtype="<i8", count=2 * (column.offset + len(column)))
    words = words[2 * column.offset:].reshape(-1, 2)
    low, high = words[:, 0], words[:, 1]
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False))
    if np.any(valid & (high != (low >> 63))):
        raise StoreDataError("(amount)", "an amount does not fit SQLite's 64-bit 1e-10 units")
    return pa.array(low, type=pa.int64(), mask=~valid)
