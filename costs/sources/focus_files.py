"""FOCUS export files as a cost source: CSV (optionally gzipped) or Parquet, as the clouds write them.

AWS Data Exports (FOCUS 1.0+), Azure cost exports of type FocusCost and the GCP FOCUS export all write the FOCUS
columns by name, plus provider extras prefixed ``x_`` that are ignored here. A file is read once per source
object (pyarrow, every CSV column as text so amounts stay exact), then served day by day.

Bad input: a file without a mandatory FOCUS column, or with an unreadable ChargePeriodStart, fails every day
(nothing of it can be trusted); a row with a non-numeric amount, an unknown currency or an empty required field
fails the day it belongs to. The error names the source, the field and the file and line.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from costs.focus import (
    MANDATORY_COLUMNS,
    CostDataError,
    CostRow,
    day_start,
    parse_amount,
    parse_tags,
    parse_timestamp,
    validate,
)
from costs.sources.base import CostSource

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass
class _File:
    path: Path
    records: list[dict[str, Any]]
    starts: list[datetime]
    line_offset: int  # CSV: header is line 1, so record i is on line i + 2; Parquet rows count from 1

    def location(self, index: int) -> str:
        unit = "line" if self.line_offset == 2 else "row"
        return f"{self.path.name} {unit} {index + self.line_offset}"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class FocusFileSource(CostSource):
    """Rows from FOCUS files matching ``paths`` (glob patterns; relative ones resolved against ``base``)."""

    def __init__(self, name: str, paths: Sequence[str | Path], *, provider: str = "", base: Path | None = None):
        super().__init__(name)
        self.provider = provider
        self.patterns = [str(p if Path(p).is_absolute() or base is None else base / p) for p in paths]
        self._cache: dict[Path, tuple[float, _File | CostDataError]] = {}

    # --- files -----------------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        found = {Path(p) for pattern in self.patterns for p in glob.glob(pattern, recursive=True)}
        return sorted(p for p in found if p.is_file() and p.name.lower().endswith(SUFFIXES))

    def unavailable(self) -> str | None:
        if not self.files():
            return f"no FOCUS file (.csv, .csv.gz, .parquet) matches {', '.join(self.patterns)}"
        return None

    def _load(self, path: Path) -> _File:
        mtime = path.stat().st_mtime
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                loaded: _File | CostDataError = self._read(path)
            except CostDataError as exc:
                loaded = exc
            self._cache[path] = (mtime, loaded)
            cached = self._cache[path]
        if isinstance(cached[1], CostDataError):
            raise cached[1]
        return cached[1]

    def _read(self, path: Path) -> _File:
        import pyarrow as pa

        try:
            if path.name.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                table = pq.read_table(path)
                offset = 1
            else:
                table = _read_csv_as_text(path)
                offset = 2
        except (pa.ArrowInvalid, OSError) as exc:
            raise CostDataError(self.name, "(file)", f"cannot be read: {exc}", location=path.name) from None
        missing = [c for c in MANDATORY_COLUMNS if c not in table.column_names]
        if missing:
            raise CostDataError(self.name, missing[0], f"column missing (also missing: {', '.join(missing[1:])})"
                                if len(missing) > 1 else "column missing", location=path.name)
        records = table.to_pylist()
        loaded = _File(path, records, [], offset)
        for index, record in enumerate(records):
            loaded.starts.append(parse_timestamp(record["ChargePeriodStart"], self.name, "ChargePeriodStart",
                                                 location=loaded.location(index)))
        log.debug("%s: %d rows from %s", self.name, len(records), path)
        return loaded

    def latest_day(self) -> date | None:
        newest: datetime | None = None
        for path in self.files():
            try:
                loaded = self._load(path)
            except CostDataError as exc:  # rows() reports it; the anchor comes from the readable files
                log.warning("%s", exc)
                continue
            if loaded.starts:
                top = max(loaded.starts)
                newest = top if newest is None or top > newest else newest
        return newest.date() if newest else None

    # --- rows ------------------------------------------------------------------------------------------------

    def rows(self, start: date, end: date) -> Iterator[CostRow]:
        low, high = day_start(start), day_start(end)
        for path in self.files():
            loaded = self._load(path)
            for index, begins in enumerate(loaded.starts):
                if low <= begins < high:
                    yield self._row(loaded, index, begins)

    def _row(self, loaded: _File, index: int, begins: datetime) -> CostRow:
        record = loaded.records[index]
        where = loaded.location(index)
        name = self.name
        try:
            row = CostRow(
                billed_cost=parse_amount(record["BilledCost"], name, "BilledCost", location=where),
                effective_cost=parse_amount(record["EffectiveCost"], name, "EffectiveCost", location=where),
                list_cost=parse_amount(record["ListCost"], name, "ListCost", location=where, required=False),
                contracted_cost=parse_amount(record["ContractedCost"], name, "ContractedCost", location=where,
                                             required=False),
                pricing_quantity=parse_amount(record["PricingQuantity"], name, "PricingQuantity", location=where,
                                              required=False),
                billing_currency=_text(record["BillingCurrency"]) or "",
                billing_account_id=_text(record["BillingAccountId"]) or "",
                billing_account_name=_text(record["BillingAccountName"]),
                billing_period_start=_optional_stamp(record["BillingPeriodStart"], name, "BillingPeriodStart", where),
                billing_period_end=_optional_stamp(record["BillingPeriodEnd"], name, "BillingPeriodEnd", where),
                charge_period_start=begins,
                charge_period_end=parse_timestamp(record["ChargePeriodEnd"], name, "ChargePeriodEnd",
                                                  location=where),
                charge_category=_text(record["ChargeCategory"]) or "",
                charge_class=_text(record["ChargeClass"]),
                charge_description=_text(record["ChargeDescription"]),
                pricing_unit=_text(record["PricingUnit"]),
                provider_name=_text(record["ProviderName"]) or "",
                publisher_name=_text(record["PublisherName"]),
                invoice_issuer_name=_text(record["InvoiceIssuerName"]),
                service_category=_text(record["ServiceCategory"]),
                service_name=_text(record["ServiceName"]) or "",
                region_id=_text(record.get("RegionId")),
                resource_id=_text(record.get("ResourceId")),
                sku_id=_text(record.get("SkuId")),
                sub_account_id=_text(record.get("SubAccountId")),
                tags=parse_tags(record.get("Tags"), name, location=where),
            )
            return validate(row, name, location=where)
        except CostDataError as exc:
            exc.record = {k: v for k, v in record.items() if v is not None}
            raise


def _optional_stamp(value: Any, source: str, field: str, where: str) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_timestamp(value, source, field, location=where)


def _read_csv_as_text(path: Path):
    """A CSV (or .csv.gz) as a pyarrow table with every column as text: amounts are parsed as Decimal later."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False)) as reader:
        names = reader.schema.names  # the header, read without converting the body
    options = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False)
    return pacsv.read_csv(path, convert_options=options)
