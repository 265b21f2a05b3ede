"""FOCUS export files as a cost source: CSV (optionally gzipped) or Parquet, FOCUS 1.0 to 1.2, as clouds write them.

AWS Data Exports, Azure cost exports of type FocusCost, the GCP FOCUS view and OCI write the FOCUS columns by name
in their own order, plus provider extras prefixed ``x_`` (not kept). What differs, and is read here:

- CSV: a UTF-8 byte order mark (Azure), the word ``NULL`` unquoted for an empty value (the FinOps Foundation's
  sample; a quoted ``"NULL"`` stays text), empty fields, ``.csv.gz``; every column is read as text, so amounts
  stay exact.
- Parquet: doubles (read by their shortest representation), decimals, timestamps with or without a zone, Tags as
  a map or as JSON text.
- Versions: the columns present say which FOCUS version a file is (``version`` in the source's settings overrides);
  every column of that version is kept, later versions' columns stay empty.

Files are grouped into deliveries (``costs.deliveries``): one delivery per period, the newest; overlapping
deliveries and incomplete ones fail the days concerned and keep what is stored. Each delivery is read once per
source object (re-read when a file changes) and checked column by column (``costs.columnar``).

Bad input: a file that cannot be read or lacks a mandatory FOCUS column fails every day its delivery covers; a bad
row (a non-numeric or out-of-range amount, an unknown currency, an empty required field, unreadable JSON tags)
fails its own day, naming the source, the field, the file and the line.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from costs.deliveries import Choice, Delivery, choose, discover
from costs.focus import FOCUS_VERSIONS, MANDATORY_COLUMNS, CostDataError, CostRow
from costs.sources.base import CostSource, DayBatch

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".csv.gz", ".parquet")
DELIVERY_FIELD = "(delivery)"


@dataclass
class _Loaded:
    """One delivery read and checked: its rows in the store's schema and where each row came from."""

    delivery: Delivery
    table: Any  # pyarrow.Table in costs.columnar.SCHEMA
    raw: Any  # pyarrow.Table as read (for the record of a bad row)
    days: np.ndarray  # numpy datetime64[D] of each row's ChargePeriodStart, ascending (``table`` is in day order)
    problems: dict[int, tuple[str, str]]  # by row index as read (``raw``)
    origin: list[tuple[Path, int, bool]]  # per file: path, first row index in the delivery, is CSV
    order: np.ndarray | None = None  # row index as read of each row of ``table`` (None: read in day order)

    def day_rows(self, day: date) -> tuple[int, int]:
        """The slice of ``table`` holding ``day``."""
        value = np.datetime64(day, "D")
        return int(np.searchsorted(self.days, value, "left")), int(np.searchsorted(self.days, value, "right"))

    def location(self, index: int) -> str:
        for path, first, is_csv in reversed(self.origin):
            if index >= first:
                offset = index - first
                return f"{path.name} line {offset + 2}" if is_csv else f"{path.name} row {offset + 1}"
        return "?"


class FocusFileSource(CostSource):
    """Rows from FOCUS files matching ``paths`` (glob patterns; relative ones resolved against ``base``)."""

    def __init__(self, name: str, paths: Sequence[str | Path], *, provider: str = "", base: Path | None = None,
                 version: str | None = None):
        super().__init__(name)
        self.provider = provider
        if version is not None and version not in FOCUS_VERSIONS:
            raise ValueError(f"source {name!r}: FOCUS version {version!r} is not one of {', '.join(FOCUS_VERSIONS)}")
        self.version = version
        self.patterns = [str(p if Path(p).is_absolute() or base is None else base / p) for p in paths]
        self._loaded: dict[tuple, _Loaded | CostDataError] = {}
        self._choice: tuple[tuple, Choice] | None = None

    # --- files and deliveries --------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        found = {Path(p) for pattern in self.patterns for p in glob.glob(pattern, recursive=True)}
        return sorted(p for p in found if p.is_file() and p.name.lower().endswith(SUFFIXES))

    def unavailable(self) -> str | None:
        if not self.files():
            return f"no FOCUS file (.csv, .csv.gz, .parquet) matches {', '.join(self.patterns)}"
        return None

    def deliveries(self) -> Choice:
        """The deliveries in use (one per period), re-chosen when a file appears, changes or goes."""
        files = self.files()
        state = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if self._choice is None or self._choice[0] != state:
            self._choice = (state, choose(discover(files), self._data_days))
        return self._choice[1]

    def _data_days(self, delivery: Delivery) -> tuple[date, ...]:
        loaded = self._load(delivery)
        if isinstance(loaded, CostDataError):
            return ()
        return tuple(sorted({d.astype(object) for d in np.unique(loaded.days[~np.isnat(loaded.days)])}))

    def _load(self, delivery: Delivery) -> _Loaded | CostDataError:
        key = tuple((str(p), p.stat().st_mtime_ns) for p in delivery.files)
        if key not in self._loaded:
            try:
                self._loaded[key] = self._read(delivery)
            except CostDataError as exc:
                self._loaded[key] = exc
        return self._loaded[key]

    def _read(self, delivery: Delivery) -> _Loaded:
        import pyarrow as pa

        from costs.columnar import decoded, normalise, version_of

        tables, origin, first = [], [], 0
        for path in delivery.files:
            raw = self._read_file(path)
            origin.append((path, first, not path.name.lower().endswith(".parquet")))
            first += raw.num_rows
            tables.append(raw)
        names = [set(t.column_names) for t in tables]
        if any(n != names[0] for n in names[1:]):
            tables = [t.select(sorted(set.intersection(*names))) for t in tables]
        if any(t.schema != tables[0].schema for t in tables[1:]):  # e.g. CSV beside Parquet: plain text
            tables = [decoded(t) for t in tables]
        raw = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        version = self.version or version_of(raw.column_names)
        table, problems = normalise(raw, version=version, delivery=delivery.label)
        starts = table["ChargePeriodStart"].to_numpy(zero_copy_only=False)
        days = starts.astype("datetime64[D]")
        order = None
        if len(days) > 1 and not np.all(days[1:] >= days[:-1]):  # NaT sorts last; a day is then one slice
            order = np.argsort(days, kind="stable")
            table, days = table.take(pa.array(order)), days[order]
        unreadable = [i for i, (name, _) in sorted(problems.by_row.items()) if name == "ChargePeriodStart"]
        loaded = _Loaded(delivery, table, raw, days, problems.by_row, origin, order)
        if unreadable:  # the row's day is unknown, so no day of this delivery can be trusted
            index = unreadable[0]
            raise CostDataError(self.name, "ChargePeriodStart", problems.by_row[index][1],
                                location=loaded.location(index), record=_record(raw, index))
        log.debug("%s: %d rows (FOCUS %s) from %s", self.name, table.num_rows, version, delivery.label)
        return loaded

    def _read_file(self, path: Path):
        import pyarrow as pa

        try:
            if path.name.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                table = pq.read_table(path, read_dictionary=_text_paths(pq.read_schema(path)))
            else:
                table = read_csv_as_text(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CostDataError(self.name, "(file)", f"cannot be read: {exc}", location=path.name) from None
        missing = [c for c in MANDATORY_COLUMNS if c not in table.column_names]
        if missing:
            raise CostDataError(self.name, missing[0], f"column missing (also missing: {', '.join(missing[1:])})"
                                if len(missing) > 1 else "column missing", location=path.name)
        return table

    def latest_day(self) -> date | None:
        days = [max(d.data_days) for d in self.deliveries().used if d.data_days]
        return max(days) if days else None

    # --- days ------------------------------------------------------------------------------------------------

    def batch(self, day: date) -> DayBatch:
        choice = self.deliveries()
        if day in choice.conflicts:
            raise CostDataError(self.name, DELIVERY_FIELD,
                                choice.conflicts[day] + "; the stored rows of this day are kept")
        covering = [d for d in choice.used if d.covers(day)]
        if not covering:
            return DayBatch(day, None, skipped=f"no delivery covers {day}; the stored rows of this day are kept")
        delivery = covering[0]
        if id(delivery) in choice.problems:
            raise CostDataError(self.name, DELIVERY_FIELD, choice.problems[id(delivery)] +
                                "; the stored rows of this day are kept", location=delivery.label)
        loaded = self._load(delivery)
        if isinstance(loaded, CostDataError):
            raise loaded
        incomplete = self._incomplete(delivery, loaded)
        if incomplete:
            raise CostDataError(self.name, DELIVERY_FIELD, f"{incomplete}; the stored rows of this day are kept",
                                location=delivery.label)
        low, high = loaded.day_rows(day)
        if loaded.problems:
            read_as = loaded.order[low:high] if loaded.order is not None else range(low, high)
            bad = sorted(int(i) for i in read_as if int(i) in loaded.problems)
        else:
            bad = []
        if bad:
            index = int(bad[0])
            field, problem = loaded.problems[index]
            more = f" (and {len(bad) - 1} more bad row{'s' if len(bad) > 2 else ''} that day)" if len(bad) > 1 else ""
            raise CostDataError(self.name, field, problem + more, location=loaded.location(index),
                                record=_record(loaded.raw, index))
        return DayBatch(day, loaded.table.slice(low, high - low), delivery=delivery.label)

    def _incomplete(self, delivery: Delivery, loaded: _Loaded) -> str | None:
        if delivery.missing:
            return (f"delivery {delivery.label} is incomplete: its manifest lists {', '.join(delivery.missing)}, "
                    "which is not here")
        if delivery.expected_rows is not None and delivery.expected_rows != loaded.table.num_rows:
            return (f"delivery {delivery.label} is incomplete: its manifest counts {delivery.expected_rows} rows, "
                    f"the files have {loaded.table.num_rows}")
        if loaded.table.num_rows == 0:
            return f"delivery {delivery.label} has a header and no rows, so it cannot replace {delivery.period}"
        return None

    def rows(self, start: date, end: date) -> Iterator[CostRow]:
        """Rows of [start, end) as objects (for callers that want them; ingestion reads ``batch``)."""
        from costs.columnar import to_rows

        day = start
        while day < end:
            batch = self.batch(day)
            if batch.table is not None:
                yield from to_rows(batch.table)
            day += timedelta(days=1)


def _text_paths(schema) -> list[str]:
    """Parquet columns to read as Arrow dictionaries (text, and the keys and values of a map such as Tags): the
    files keep them dictionary-encoded, and every check then looks at each distinct value once."""
    import pyarrow as pa

    paths = []
    for field in schema:
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            paths.append(field.name)
        elif pa.types.is_map(field.type) and pa.types.is_string(field.type.key_type) and \
                pa.types.is_string(field.type.item_type):
            paths += [f"{field.name}.key_value.key", f"{field.name}.key_value.value"]
    return paths


def _record(raw, index: int) -> dict:
    return {k: v for k, v in raw.slice(index, 1).to_pylist()[0].items() if v is not None}


def read_csv_as_text(path: Path):
    """A CSV (or .csv.gz) as a pyarrow table with every column as text: amounts are parsed as decimals later.

    Unquoted empty fields and the unquoted word NULL are null; a quoted "NULL" is text. A UTF-8 byte order mark
    before the header is skipped by Arrow's reader.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def options(types: dict | None = None) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(column_types=types or {}, null_values=["", "NULL"], strings_can_be_null=True,
                                    quoted_strings_can_be_null=False)

    with pacsv.open_csv(path, convert_options=options()) as reader:
        names = reader.schema.names  # the header, read without converting the body
    return pacsv.read_csv(path, convert_options=options({n: pa.string() for n in names}))
