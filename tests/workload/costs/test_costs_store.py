"""The cost store on SQLite and PostgreSQL: migrations, exact amounts, idempotent day-by-day ingestion."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import SAMPLES

from costs.focus import CostRow, validate
from costs.ingest import ingest
from costs.sources.base import CostSource
from costs.sources.focus_files import FocusFileSource

WINDOW = (date(2026, 10, 22), date(2026, 11, 21))


class ListSource(CostSource):
    """Rows held in memory (the store's behaviour, not a connector's, is under test here)."""

    def __init__(self, name: str, rows: list[CostRow]) -> None:
        super().__init__(name)
        self.rows_ = rows

    def rows(self, start, end):
        low, high = datetime(start.year, start.month, start.day), datetime(end.year, end.month, end.day)
        return [r for r in self.rows_ if low <= r.charge_period_start < high]


def row(day: int, amount: str, resource: str = "i-1", project: str | None = "axis_failures") -> CostRow:
    start = datetime(2026, 11, day)
    return CostRow(billed_cost=Decimal(amount), effective_cost=Decimal(amount), billing_currency="USD",
                   charge_period_start=start, charge_period_end=start + timedelta(days=1), provider_name="AWS",
                   service_name="Amazon Elastic Compute Cloud", resource_id=resource,
                   tags={"mledge-project": project} if project else {})


def test_migrated_to_head(any_store):
    from alembic.runtime.migration import MigrationContext

    with any_store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0002"


@pytest.mark.parametrize("pattern", ["aws/mledge-focus/data/**/*.parquet", "azure/mledge-focuscost/**/*.csv",
                                     "gcp/*.csv"], ids=["aws", "azure", "gcp"])
def test_ingesting_the_same_days_twice_changes_nothing(any_store, pattern):
    source = FocusFileSource("sample", [pattern], base=SAMPLES)
    first = ingest(source, any_store, *WINDOW)
    count, totals = any_store.count(), any_store.totals()
    second = ingest(source, any_store, *WINDOW)
    assert first.rows == second.rows == count > 0
    assert any_store.count() == count
    assert any_store.totals() == totals
    expected = sum((r.billed_cost for r in source.rows(*WINDOW)), Decimal(0))
    assert totals["BilledCost"] == expected


def test_amounts_stay_exact(any_store):
    """0.1 + 0.2 and 1e-10 steps: a float store would show 0.30000000000000004 or lose the small units."""
    rows = [row(1, "0.1", "a"), row(1, "0.2", "b"), row(1, "123456789.0000000001", "c"),
            row(1, "-0.0000000001", "d")]
    ingest(ListSource("exact", rows), any_store, date(2026, 11, 1), date(2026, 11, 2))
    assert any_store.totals()["BilledCost"] == Decimal("123456789.3000000000")


def test_a_charge_gone_from_a_reissued_day_is_removed_and_others_kept(any_store):
    rows = [row(1, "1", "a"), row(1, "2", "b"), row(2, "4", "a")]
    ingest(ListSource("s", rows), any_store, date(2026, 11, 1), date(2026, 11, 3))
    assert any_store.totals()["BilledCost"] == Decimal(7)
    reissued = [row(1, "1.5", "a"), row(2, "4", "a")]  # "b" is gone, "a" changed on day 1
    ingest(ListSource("s", reissued), any_store, date(2026, 11, 1), date(2026, 11, 2))
    assert any_store.count() == 2
    assert any_store.totals()["BilledCost"] == Decimal("5.5")


def test_duplicate_keys_in_one_batch_are_summed(any_store):
    rows = [row(3, "1.25"), row(3, "2.50")]  # same charge identity twice (e.g. split lines of one export)
    result = ingest(ListSource("dup", rows), any_store, date(2026, 11, 3), date(2026, 11, 4))
    assert result.rows == 1 and any_store.count() == 1
    assert any_store.totals()["BilledCost"] == Decimal("3.75")


def test_sources_do_not_touch_each_others_rows(any_store):
    ingest(ListSource("one", [row(5, "1")]), any_store, date(2026, 11, 5), date(2026, 11, 6))
    ingest(ListSource("two", [row(5, "2")]), any_store, date(2026, 11, 5), date(2026, 11, 6))
    ingest(ListSource("one", []), any_store, date(2026, 11, 5), date(2026, 11, 6))  # one's day is now empty
    assert any_store.count("one") == 0 and any_store.count("two") == 1


def test_a_float_amount_is_refused():
    with pytest.raises(ValueError, match="BilledCost.*float"):
        validate(CostRow(billed_cost=0.1, effective_cost=Decimal(0), billing_currency="USD",  # type: ignore[arg-type]
                         charge_period_start=datetime(2026, 11, 1), charge_period_end=datetime(2026, 11, 2),
                         provider_name="AWS", service_name="x"), "test")


def test_rows_outside_the_asked_day_are_refused(sqlite_store):
    from costs.ingest import IngestError

    class Sloppy(ListSource):
        def rows(self, start, end):
            return self.rows_  # ignores the window

    with pytest.raises(IngestError, match="outside the requested day"):
        ingest(Sloppy("sloppy", [row(9, "1")]), sqlite_store, date(2026, 11, 8), date(2026, 11, 9))
    assert sqlite_store.count() == 0


def test_ingestion_runs_are_recorded(sqlite_store):
    from sqlalchemy import select

    from costs.store import ingestion_runs

    ingest(ListSource("s", [row(1, "1")]), sqlite_store, date(2026, 11, 1), date(2026, 11, 2))
    with sqlite_store.engine.connect() as conn:
        (run,) = conn.execute(select(ingestion_runs)).all()
    assert run.status == "succeeded" and run.rows_written == 1 and run.source == "s"


def test_text_survives_the_bulk_path(any_store):
    """Tabs, newlines, backslashes, a literal \\N, quotes and non-ASCII reach the store unchanged (COPY escaping)."""
    from sqlalchemy import select

    from costs.store import cost_rows

    odd = "tab\there, line\nbreak, back\\slash, literal \\N, \"quoted\", 'single', Zürich €"
    special = row(4, "1.5", resource=odd)
    special.charge_description = odd
    special.tags = {"mledge-project": "axis_failures", "note": odd}
    ingest(ListSource("odd", [special, row(4, "2", resource="plain")]), any_store, date(2026, 11, 4),
           date(2026, 11, 5))
    with any_store.engine.connect() as conn:
        stored = conn.execute(select(cost_rows.c.ResourceId, cost_rows.c.ChargeDescription, cost_rows.c.Tags,
                                     cost_rows.c.ListCost, cost_rows.c.x_estimated)
                              .order_by(cost_rows.c.BilledCost)).all()
    assert stored[0].ResourceId == odd and stored[0].ChargeDescription == odd
    assert json.loads(stored[0].Tags)["note"] == odd
    assert stored[0].ListCost is None and stored[0].x_estimated is False
    assert stored[1].ResourceId == "plain"


def test_a_0001_store_keeps_its_quantities_through_0002(tmp_path):
    """0001 kept PricingQuantity as 1e-10 units on SQLite; 0002 turns it into exact decimal text."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, select

    from costs.store import MIGRATIONS, CostStore, cost_rows

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.exec_driver_sql(
            'INSERT INTO cost_rows (x_source, x_row_key, "BilledCost", "EffectiveCost", "BillingCurrency", '
            '"BillingAccountId", "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ProviderName", '
            '"ServiceName", "PricingQuantity", x_estimated) VALUES (\'old\', \'k1\', 15000000000, 15000000000, '
            "'USD', 'acct', '2026-11-01 00:00:00.000000', '2026-11-02 00:00:00.000000', 'Usage', 'AWS', 'EC2', "
            "-123456789012345, 0), ('old', 'k2', 1, 1, 'USD', 'acct', '2026-11-01 00:00:00.000000', "
            "'2026-11-02 00:00:00.000000', 'Usage', 'AWS', 'EC2', NULL, 0)")
    engine.dispose()
    store = CostStore(url)
    with store.engine.connect() as conn:
        stored = dict(conn.execute(select(cost_rows.c.x_row_key, cost_rows.c.PricingQuantity)).all())
    assert stored == {"k1": Decimal("-12345.6789012345"), "k2": None}
    assert store.totals("old")["BilledCost"] == Decimal("1.5000000001")
    store.dispose()


def test_a_day_fingerprint_sees_every_value_and_ignores_row_order():
    from costs.columnar import fingerprint, from_rows, row_keys

    table = from_rows([row(1, "1.5", "i-1"), row(1, "2.25", "i-2"), row(1, "3", "i-3", project=None)])
    table = table.append_column("x_row_key", row_keys(table))
    digest = fingerprint(table)
    assert fingerprint(table.take([2, 0, 1])) == digest
    import pyarrow as pa

    costs = table["BilledCost"].to_pylist()
    swapped = table.set_column(table.schema.get_field_index("BilledCost"), "BilledCost",
                               pa.array([costs[1], costs[0], costs[2]], table.schema.field("BilledCost").type))
    assert fingerprint(swapped) != digest  # the same amounts on other rows
    nulls = table.set_column(table.schema.get_field_index("x_project"), "x_project",
                             table["x_project"].combine_chunks().fill_null(""))
    assert fingerprint(nulls) != digest  # empty text is not null
