"""Cost rows as Arrow columns: parsing, checks, project attribution, natural keys and day fingerprints.

Every source hands the store one Arrow table per day in the store's schema (``SCHEMA``): FOCUS 1.0-1.2 column
names, money as decimal128(38, 10), quantities and unit prices as decimal128(38, 18), timestamps as naive UTC
microseconds, text as UTF-8, plus our ``x_`` extras. Export files get there without a Python object per row
(``normalise``); API connectors build ``CostRow`` objects and go through ``from_rows``.

Checks are vectorised and remember, per row, the first field that is wrong and why (``Problems``), so that a bad
row fails only its own day, with the file and line named. Amounts are parsed from their text (or a Parquet
double's shortest representation) as exact decimals, rounded half away from zero, and refused beyond
``MAX_AMOUNT``/``MAX_QUANTITY``: nothing is ever a binary float.

The natural key of a row (``row_keys``) is its charge period's start (YYYYMMDDHHMM, for index locality) and a
128-bit digest of every column that identifies the charge, which is every column except the additive ones
(costs and quantities) and our bookkeeping extras. Each distinct value of a column is hashed once with BLAKE2b;
the per-row digests are combined with a 64-bit mixing function in NumPy, in two independent lanes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costs.focus import (
    ADDITIVE_COLUMNS,
    ALL_FOCUS_COLUMNS,
    AMOUNT_PLACES,
    CHARGE_CATEGORIES,
    CHARGE_CLASSES,
    COLUMNS,
    MAX_AMOUNT,
    MAX_QUANTITY,
    MONEY_COLUMNS,
    QUANTITY_COLUMNS,
    QUANTITY_PLACES,
    TIMESTAMP_COLUMNS,
    CostDataError,
    CostRow,
    TagRule,
    known_currencies,
    parse_timestamp,
)

MONEY = pa.decimal128(38, AMOUNT_PLACES)
QUANTITY = pa.decimal128(38, QUANTITY_PLACES)
STAMP = pa.timestamp("us")
_WIDE = pa.decimal128(38, QUANTITY_PLACES)  # every amount is parsed at this scale, then rounded
EXTRA_COLUMNS = ("x_project", "x_site", "x_estimated", "x_focus_version", "x_delivery")
REQUIRED_TEXT = ("BillingCurrency", "BillingAccountId", "ChargeCategory", "ProviderName", "ServiceName")
REQUIRED_MONEY = ("BilledCost", "EffectiveCost")


def _type_of(column: str) -> pa.DataType:
    if column in MONEY_COLUMNS:
        return MONEY
    if column in QUANTITY_COLUMNS:
        return QUANTITY
    if column in TIMESTAMP_COLUMNS:
        return STAMP
    return pa.string()


SCHEMA = pa.schema([pa.field(c, _type_of(c)) for c in ALL_FOCUS_COLUMNS] + [
    pa.field("x_project", pa.string()), pa.field("x_site", pa.string()), pa.field("x_estimated", pa.bool_()),
    pa.field("x_focus_version", pa.string()), pa.field("x_delivery", pa.string()),
])
# Columns that identify a charge (everything but what adds up and our bookkeeping).
IDENTITY_COLUMNS = tuple(c for c in ALL_FOCUS_COLUMNS if c not in ADDITIVE_COLUMNS) + ("x_site",)
_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_ZONE = r"(Z|z|[+-]\d\d:?\d\d)$"
_DATE_ONLY = r"^\d{4}-\d{2}-\d{2}$"
FINGERPRINT_SALT = b"mledge-cost-day-v3"


@dataclass
class Problems:
    """The first problem found in each bad row: row index -> (FOCUS column, what is wrong)."""

    by_row: dict[int, tuple[str, str]] = field(default_factory=dict)

    def add(self, rows: Iterable[int], column: str, problem: Callable[[int], str] | str) -> None:
        for row in rows:
            if row not in self.by_row:
                self.by_row[row] = (column, problem if isinstance(problem, str) else problem(row))

    def __bool__(self) -> bool:
        return bool(self.by_row)


def _indices(mask: pa.Array | np.ndarray) -> np.ndarray:
    """Row indices where a boolean mask is true (nulls count as false)."""
    if isinstance(mask, np.ndarray):
        return np.flatnonzero(mask)
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def _null(type_: pa.DataType) -> pa.Scalar:
    return pa.scalar(None, type_)


def _as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as trimmed UTF-8 text, empty values as null (the FOCUS null)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return _as_text(column.chunk(0))
        if pa.types.is_dictionary(column.type):  # each file's dictionary trimmed on its own
            return pa.concat_arrays([_as_text(chunk) for chunk in column.chunks] or [pa.array([], pa.string())])
        column = column.combine_chunks()
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.string())
    if pa.types.is_dictionary(column.type):  # Parquet's dictionary pages: each distinct value trimmed once
        return _as_text(column.dictionary).take(column.indices)
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
    trimmed = pc.utf8_trim_whitespace(column)
    return pc.if_else(pc.equal(trimmed, ""), _null(pa.string()), trimmed)


def _encoded(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.DictionaryArray | None]:
    """One array, and its dictionary encoding when its values repeat enough to be worth converting once each
    (None: convert every row)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()  # dictionaries of several files are unified
    if pa.types.is_dictionary(column.type):
        return column, column  # used through its dictionary only
    if len(column) < 64 or pc.count_distinct(column.slice(0, 1024)).as_py() * 2 > min(len(column), 1024):
        return column, None  # amounts: nearly every value differs (judged from the first rows)
    encoded = pc.dictionary_encode(column)
    return column, (encoded if len(encoded.dictionary) * 2 <= len(column) else None)


def by_distinct(column: pa.Array | pa.ChunkedArray, convert: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``convert`` applied to each distinct value once and spread back over the rows, when the column repeats its
    values (a unit price per SKU, an hour's timestamp); applied to every row otherwise."""
    column, encoded = _encoded(column)
    if encoded is None:
        return convert(column)
    return convert(encoded.dictionary).take(encoded.indices)


def _per_distinct(column: pa.Array | pa.ChunkedArray, name: str, problems: Problems, *, required: bool,
                  convert: Callable[[pa.Array, Problems], pa.Array]) -> pa.Array:
    """Like ``by_distinct`` for a checked conversion: a problem of a distinct value is reported for each of its
    rows, and a null row of a required column is reported empty."""
    column, encoded = _encoded(column)
    if encoded is None:
        return convert(column, problems)
    found = Problems()
    converted = convert(encoded.dictionary, found)
    index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    if found:
        rows_of: dict[int, list[int]] = {}
        for row in np.flatnonzero(np.isin(index, np.fromiter(found.by_row, dtype=np.int64))):
            rows_of.setdefault(int(index[row]), []).append(int(row))
        for position, (field_name, problem) in found.by_row.items():
            problems.add(rows_of.get(position, []), field_name, problem)
    if required:
        problems.add(np.flatnonzero(index < 0), name, "is empty")
    return converted.take(encoded.indices)


def _decimal(column: pa.Array | pa.ChunkedArray, name: str, problems: Problems, *, places: int,
             limit: Decimal, required: bool) -> pa.Array:
    """Exact decimals from text, integers, decimals or doubles (by shortest representation), each distinct value
    parsed once."""
    return _per_distinct(column, name, problems, required=required, convert=lambda values, found: _decimal_values(
        values, name, found, places=places, limit=limit, required=required))


def _decimal_values(column: pa.Array, name: str, problems: Problems, *, places: int, limit: Decimal,
                    required: bool) -> pa.Array:
    target = pa.decimal128(38, places)
    typed = pa.types.is_decimal(column.type) or pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    if typed:  # Parquet numbers: no text to check; doubles go through their shortest round-tripping text
        if pa.types.is_floating(column.type):
            odd = pc.or_(pc.is_nan(column), pc.is_inf(column))
            problems.add(_indices(odd), name, lambda i: f"{column[i].as_py()!r} is not a finite number")
            column = pc.if_else(odd, _null(column.type), column)
        text = column.cast(pa.string())
        missing = pc.is_null(text)
        clean = text
    else:
        text = _as_text(column)
        missing = pc.is_null(text)
        well_formed = pc.match_substring_regex(text, _NUMBER)
        malformed = _indices(pc.and_(pc.invert(missing), pc.invert(well_formed)))
        problems.add(malformed, name, lambda i: f"{text[i].as_py()!r} is not a number")
        clean = pc.if_else(well_formed, text, _null(pa.string()))
    if required:
        problems.add(_indices(missing), name, "is empty")
    try:
        parsed = clean.cast(_WIDE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        parsed = _decimal_slowly(clean, name, problems)
    rounded = pc.round(parsed, ndigits=places, round_mode="half_towards_infinity").cast(target)
    too_big = pc.greater(pc.abs(rounded), pa.scalar(limit, target))
    problems.add(_indices(too_big), name,
                 lambda i: f"{text[i].as_py()} is out of range (the store keeps up to ±{limit})")
    return pc.if_else(too_big, _null(target), rounded)


def _decimal_slowly(clean: pa.Array, name: str, problems: Problems) -> pa.Array:
    """Value by value, for a column Arrow could not cast whole (an exponent beyond decimal128's range)."""
    limit = Decimal(10) ** (38 - QUANTITY_PLACES)
    values: list[Decimal | None] = []
    for index, text in enumerate(clean.to_pylist()):
        if text is None:
            values.append(None)
            continue
        try:
            value = Decimal(text)
        except InvalidOperation:
            problems.add([index], name, f"{text!r} is not a number")
            values.append(None)
            continue
        if not value.is_finite() or abs(value) >= limit:
            problems.add([index], name, f"{text} is out of range (the store keeps up to ±{MAX_AMOUNT} for amounts"
                                        f" and ±{MAX_QUANTITY} for quantities)")
            values.append(None)
            continue
        values.append(value.quantize(Decimal(1).scaleb(-QUANTITY_PLACES)))
    return pa.array(values, _WIDE)


def _stamps(column: pa.Array | pa.ChunkedArray, name: str, problems: Problems, *, required: bool) -> pa.Array:
    """Naive UTC timestamps from ISO 8601 text (``Z``, offsets, `` UTC``, none meaning UTC), dates or timestamps."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_timestamp(column.type):
        return _naive(column)
    if pa.types.is_date(column.type):
        return column.cast(STAMP)
    return _per_distinct(_as_text(column), name, problems, required=required,
                         convert=lambda values, found: _stamps_text(values, name, found, required=required))


def _stamps_text(text: pa.Array, name: str, problems: Problems, *, required: bool) -> pa.Array:
    if required:
        problems.add(_indices(pc.is_null(text)), name, "is empty")
    text = pc.replace_substring_regex(text, r"\s*UTC$", "Z")
    zoned = pc.match_substring_regex(text, _ZONE)
    date_only = pc.match_substring_regex(text, _DATE_ONLY)
    text = pc.if_else(date_only, pc.binary_join_element_wise(text, "T00:00:00Z", ""),
                      pc.if_else(zoned, text, pc.binary_join_element_wise(text, "Z", "")))
    try:
        parsed = text.cast(pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        parsed = _stamps_slowly(text, name, problems)
    return _naive(parsed)


def _naive(stamps: pa.Array) -> pa.Array:
    """Microsecond timestamps without a zone, in UTC (Arrow keeps instants as UTC epochs whatever the zone)."""
    if stamps.type.unit != "us":
        stamps = stamps.cast(pa.timestamp("us", tz=stamps.type.tz), safe=False)
    return stamps.cast(pa.int64()).cast(STAMP)


def _stamps_slowly(text: pa.Array, name: str, problems: Problems) -> pa.Array:
    values: list[datetime | None] = []
    for index, value in enumerate(text.to_pylist()):
        if value is None:
            values.append(None)
            continue
        try:
            values.append(parse_timestamp(value, "", name))
        except CostDataError:
            problems.add([index], name, f"{value.removesuffix('Z')!r} is not an ISO 8601 timestamp")
            values.append(None)
    return pa.array(values, STAMP).cast(pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def canonical_tags(value: Any) -> tuple[str | None, str | None]:
    """(canonical JSON text or None, problem or None) for one Tags value: JSON object text, mapping or pairs."""
    if value is None:
        return None, None
    if isinstance(value, str):
        if not value.strip():
            return None, None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, f"is not JSON: {exc.msg}"
    if isinstance(value, list):  # Parquet map<string,string> as [(key, value), ...]
        try:
            value = dict(value)
        except (TypeError, ValueError):
            return None, "is not a list of key/value pairs"
    if not isinstance(value, Mapping):
        return None, f"is a {type(value).__name__}, not an object"
    if not value:
        return None, None
    tags = {str(k): "" if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()}
    return json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False), None


def _tags(column: pa.Array | pa.ChunkedArray, problems: Problems) -> pa.Array:
    """Tags as canonical JSON text (sorted keys); each distinct value is parsed once."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_map(column.type):
        return _map_tags(column, problems)
    if pa.types.is_list(column.type) or pa.types.is_struct(column.type):
        values = column.to_pylist()
        texts, bad = [], []
        for index, value in enumerate(values):
            text, problem = canonical_tags(value)
            texts.append(text)
            if problem:
                bad.append((index, problem))
        for index, problem in bad:
            problems.add([index], "Tags", problem)
        return pa.array(texts, pa.string())
    text = _as_text(column)
    encoded = pc.dictionary_encode(text)
    canonical, bad_values = [], {}
    for position, value in enumerate(encoded.dictionary.to_pylist()):
        result, problem = canonical_tags(value)
        canonical.append(result)
        if problem:
            bad_values[position] = problem
    if bad_values:
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        for position, problem in bad_values.items():
            problems.add(np.flatnonzero(indices == position), "Tags", problem)
    return pa.array(canonical, pa.string()).take(encoded.indices)


def _map_tags(column: pa.MapArray, problems: Problems) -> pa.Array:
    """Parquet map<string, string> tags: each row's pairs joined in C++, each distinct set parsed once."""
    if column.offset:  # a slice: copy it so that offsets, keys and items start at 0
        column = pa.concat_arrays([column, pa.array([], column.type)])
    keys = pc.fill_null(column.keys.cast(pa.string()), "")
    values = pc.fill_null(column.items.cast(pa.string()), "")
    pairs = pc.binary_join_element_wise(keys, values, "\x1f")
    joined = pc.binary_join(pa.ListArray.from_arrays(column.offsets, pairs, mask=column.is_null()), "\x1e")
    encoded = pc.dictionary_encode(joined)
    canonical = []
    for text in encoded.dictionary.to_pylist():
        entries = [entry.split("\x1f", 1) for entry in text.split("\x1e")] if text else []
        canonical.append(canonical_tags({k: v for k, v in entries})[0])
    return pa.array(canonical, pa.string()).take(encoded.indices)


def version_of(columns: Iterable[str]) -> str:
    """The FOCUS version a set of column names belongs to (the newest whose own columns appear)."""
    present = set(columns)
    if present & {"BillingAccountType", "InvoiceId", "PricingCurrency", "SubAccountType",
                  "PricingCurrencyEffectiveCost"}:
        return "1.2"
    if present & {"CapacityReservationId", "CommitmentDiscountQuantity", "ServiceSubcategory", "SkuMeter",
                  "SkuPriceDetails"}:
        return "1.1"
    return "1.0"


def normalise(raw: pa.Table, *, version: str, delivery: str | None = None) -> tuple[pa.Table, Problems]:
    """A FOCUS export's table in the store's schema, and the problems of its bad rows (row index -> first one).

    Columns of the version that the file lacks are null; columns of no FOCUS version (provider ``x_`` columns,
    a data set's own ``Id``) are not kept.
    """
    n = raw.num_rows
    problems = Problems()
    out: dict[str, pa.Array] = {}
    names = set(raw.column_names)

    def column(name: str) -> pa.Array | pa.ChunkedArray:
        return raw[name] if name in names else pa.nulls(n, pa.string())

    for name in ALL_FOCUS_COLUMNS:
        if name in MONEY_COLUMNS:
            out[name] = _decimal(column(name), name, problems, places=AMOUNT_PLACES, limit=MAX_AMOUNT,
                                 required=name in REQUIRED_MONEY)
        elif name in QUANTITY_COLUMNS:
            out[name] = _decimal(column(name), name, problems, places=QUANTITY_PLACES, limit=MAX_QUANTITY,
                                 required=False)
        elif name in TIMESTAMP_COLUMNS:
            out[name] = _stamps(column(name), name, problems, required=name.startswith("Charge"))
        elif name == "Tags":
            out[name] = _tags(column(name), problems)
        else:
            out[name] = _as_text(column(name))
    _check_text(out, problems)
    _fill_billing_period(out)
    out.update({
        "x_project": pa.nulls(n, pa.string()), "x_site": pa.nulls(n, pa.string()),
        "x_estimated": pa.array(np.zeros(n, dtype=bool)),
        "x_focus_version": pc.fill_null(pa.nulls(n, pa.string()), version),
        "x_delivery": pc.fill_null(pa.nulls(n, pa.string()), delivery) if delivery else pa.nulls(n, pa.string()),
    })
    return pa.Table.from_arrays([out[f.name] for f in SCHEMA], schema=SCHEMA), problems


def _check_text(out: dict[str, pa.Array], problems: Problems) -> None:
    for name in REQUIRED_TEXT:
        problems.add(_indices(pc.is_null(out[name])), name, "is empty")
    currencies = pa.array(sorted(known_currencies()))
    for name in ("BillingCurrency", "PricingCurrency"):
        values = out[name]
        bad = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=currencies)))
        problems.add(_indices(bad), name, lambda i, v=values: f"{v[i].as_py()!r} is not an ISO 4217 currency code")
    category = out["ChargeCategory"]
    bad = pc.and_(pc.is_valid(category), pc.invert(pc.is_in(category, value_set=pa.array(sorted(CHARGE_CATEGORIES)))))
    problems.add(_indices(bad), "ChargeCategory",
                 lambda i: f"{category[i].as_py()!r} is not one of {', '.join(sorted(CHARGE_CATEGORIES))}")
    charge_class = out["ChargeClass"]
    bad = pc.and_(pc.is_valid(charge_class),
                  pc.invert(pc.is_in(charge_class, value_set=pa.array(sorted(CHARGE_CLASSES)))))
    problems.add(_indices(bad), "ChargeClass",
                 lambda i: f"{charge_class[i].as_py()!r} is neither empty nor 'Correction'")
    start, end = out["ChargePeriodStart"], out["ChargePeriodEnd"]
    backwards = pc.less(end, start)
    problems.add(_indices(backwards), "ChargePeriodEnd",
                 lambda i: f"{end[i].as_py()} is before ChargePeriodStart {start[i].as_py()}")


def _fill_billing_period(out: dict[str, pa.Array]) -> None:
    """Rows without a billing period (aggregated APIs) get the calendar month of their charge."""
    start = out["ChargePeriodStart"]
    if out["BillingPeriodStart"].null_count or out["BillingPeriodEnd"].null_count:
        month = pc.floor_temporal(start, unit="month")
        following = pc.floor_temporal(pc.add(month, pa.scalar(timedelta(days=32))), unit="month")
        out["BillingPeriodStart"] = pc.coalesce(out["BillingPeriodStart"], month)
        out["BillingPeriodEnd"] = pc.coalesce(out["BillingPeriodEnd"], following)


# --- rows from connectors ----------------------------------------------------------------------------------------


def from_rows(rows: Iterable[CostRow]) -> pa.Table:
    """``CostRow`` objects (already validated) as a table in the store's schema."""
    rows = list(rows)
    data: dict[str, list] = {name: [] for name in SCHEMA.names}
    attributes = [(attribute, column) for attribute, column in COLUMNS.items()]
    for row in rows:
        for attribute, column in attributes:
            value = getattr(row, attribute)
            if column == "Tags":
                value = canonical_tags(value)[0]
            data[column].append(value)
        data["x_focus_version"].append(None)
        data["x_delivery"].append(None)
    arrays = []
    for f in SCHEMA:
        values = data[f.name]
        if f.name in MONEY_COLUMNS or f.name in QUANTITY_COLUMNS:
            places = AMOUNT_PLACES if f.name in MONEY_COLUMNS else QUANTITY_PLACES
            quantum = Decimal(1).scaleb(-places)
            values = [None if v is None else Decimal(v).quantize(quantum) for v in values]
        if f.name == "x_estimated":
            values = [bool(v) for v in values]
        arrays.append(pa.array(values, f.type))
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    out = {name: table[name].combine_chunks() for name in SCHEMA.names}
    _fill_billing_period(out)
    return pa.Table.from_arrays([out[f.name] for f in SCHEMA], schema=SCHEMA)


def to_rows(table: pa.Table) -> list[CostRow]:
    """The inverse of ``from_rows`` (for callers that want objects; the store never needs them)."""
    attributes = {column: attribute for attribute, column in COLUMNS.items()}
    rows = []
    for record in table.to_pylist():
        values = {attributes[c]: v for c, v in record.items() if c in attributes}
        values["tags"] = json.loads(values["tags"]) if values.get("tags") else {}
        values["x_estimated"] = bool(values.get("x_estimated"))
        rows.append(CostRow(**values))
    return rows


# --- attribution, keys, duplicates, fingerprints -------------------------------------------------------------------


def attribute(table: pa.Table, rule: TagRule) -> pa.Table:
    """Fill x_project and x_site from each row's tags by ``rule`` (the provider picks the key); a project or site
    already set (e.g. by the training recorder) is kept when the tags name none."""
    if table.num_rows == 0:
        return table
    tags = pc.dictionary_encode(table["Tags"].combine_chunks())
    providers = pc.dictionary_encode(table["ProviderName"].combine_chunks())
    tag_values = [json.loads(t) if t else {} for t in tags.dictionary.to_pylist()]
    provider_values = providers.dictionary.to_pylist()
    tag_index = pc.fill_null(tags.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    provider_index = pc.fill_null(providers.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    combined = (tag_index + 1) * (len(provider_values) + 1) + (provider_index + 1)
    combos, inverse = np.unique(combined, return_inverse=True)
    projects, sites = [], []
    for combo in combos:
        t, p = divmod(int(combo), len(provider_values) + 1)
        values = tag_values[t - 1] if t else {}
        provider = provider_values[p - 1] if p else None
        projects.append(rule.project(values, provider))
        sites.append(rule.site(values))
    project = pa.array(projects, pa.string()).take(pa.array(inverse))
    site = pa.array(sites, pa.string()).take(pa.array(inverse))
    table = table.set_column(table.schema.get_field_index("x_project"), "x_project",
                             pc.coalesce(project, table["x_project"].combine_chunks()))
    return table.set_column(table.schema.get_field_index("x_site"), "x_site",
                            pc.coalesce(table["x_site"].combine_chunks(), site))


_K1 = np.uint64(0xBF58476D1CE4E5B9)
_K2 = np.uint64(0x94D049BB133111EB)
_SEEDS = (np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344))
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One step of a SplitMix64-style combination of running digests ``h`` with column digests ``v``."""
    with np.errstate(over="ignore"):
        h = (h ^ v) * _K1
        h ^= h >> np.uint64(31)
        h *= _K2
        h ^= h >> np.uint64(29)
    return h


def _column_digests(name: str, column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Two 64-bit BLAKE2b lanes of (column name, value) per row, each distinct value hashed once, and the rows
    where the column is null (None: no null). A null leaves the running digest as it is, so a column that is
    empty everywhere costs nothing and a row's key never depends on the other rows of its batch."""
    encoded = pc.dictionary_encode(column)
    dictionary = encoded.dictionary
    texts = (dictionary if pa.types.is_string(dictionary.type) else dictionary.cast(pa.string())).to_pylist()
    blake2b = hashlib.blake2b
    salt = name.encode() + b"\x1f"
    digests = b"".join(blake2b(salt + text.encode(), digest_size=16).digest() for text in texts)
    lanes = np.zeros((len(texts) + 1, 2), dtype=np.uint64)
    if texts:
        lanes[1:] = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    nulls = (index == 0) if column.null_count else None
    return lanes[index, 0], lanes[index, 1], nulls


def row_keys(table: pa.Table) -> pa.Array:
    """The natural key of every row: YYYYMMDDHHMM of ChargePeriodStart and 32 hex digits of identity."""
    n = table.num_rows
    first = np.full(n, _SEEDS[0], dtype=np.uint64)
    second = np.full(n, _SEEDS[1], dtype=np.uint64)
    for name in IDENTITY_COLUMNS:
        column = table[name].combine_chunks()
        if column.null_count == n:
            continue
        a, b, nulls = _column_digests(name, column)
        mixed_a, mixed_b = _mix(first, a), _mix(second, b)
        if nulls is not None:
            mixed_a[nulls], mixed_b[nulls] = first[nulls], second[nulls]
        first, second = mixed_a, mixed_b
    lanes = np.stack([first, second], axis=1).astype(">u8").view(np.uint8).reshape(n, 16)
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[lanes >> 4]
    hexed[:, 1::2] = _HEX[lanes & 15]
    offsets = pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32).tobytes())
    digests = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(hexed.tobytes())])
    prefix = pc.strftime(table["ChargePeriodStart"].combine_chunks(), "%Y%m%d%H%M")
    return pc.binary_join_element_wise(prefix, digests, "")


def merge_duplicates(table: pa.Table, keys: pa.Array) -> tuple[pa.Table, pa.Array]:
    """Rows sharing a natural key are one charge split over lines: their additive columns are summed, the rest
    taken from the first of them (they are equal, being the key)."""
    if table.num_rows < 2 or pc.count_distinct(keys).as_py() == table.num_rows:
        return table, keys
    parts = {"_key": keys, "_row": pa.array(np.arange(table.num_rows))}
    parts.update({c: table[c] for c in ADDITIVE_COLUMNS})
    grouped = pa.table(parts).group_by("_key", use_threads=False).aggregate(
        [("_row", "min")] + [(c, "sum") for c in ADDITIVE_COLUMNS])
    grouped = grouped.sort_by("_row_min")
    merged = table.take(grouped["_row_min"])
    for column in ADDITIVE_COLUMNS:
        merged = merged.set_column(merged.schema.get_field_index(column), column,
                                   grouped[f"{column}_sum"].cast(SCHEMA.field(column).type))
    return merged, grouped["_key"].combine_chunks()


_NULL_LANES = (np.uint64(0x452821E638D01377), np.uint64(0xBE5466CF34E90C6C))


def _value_lanes(name: str, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit lanes per row standing for the value (null distinct from every value): fixed-width values as
    their bits, text of one length as its bytes, other text through ``_column_digests``."""
    n = len(column)
    type_ = column.type
    if pa.types.is_decimal(type_):
        words = np.frombuffer(column.buffers()[1], dtype="<u8", count=2 * (column.offset + n))[2 * column.offset:]
        a, b = words[0::2].copy(), words[1::2].copy()
    elif pa.types.is_timestamp(type_) or pa.types.is_integer(type_) or pa.types.is_boolean(type_):
        values = pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64)
        a, b = values, values ^ _SEEDS[1]
    else:
        text = column if pa.types.is_string(type_) else column.cast(pa.string())
        offsets = np.frombuffer(text.buffers()[1], dtype="<i4", count=text.offset + n + 1)[text.offset:]
        lengths = np.diff(offsets)
        width = int(lengths[0]) if n else 0
        if n and not text.null_count and np.all(lengths == width) and width:  # e.g. x_row_key: no dictionary
            raw = np.frombuffer(text.buffers()[2], dtype=np.uint8, count=int(offsets[-1] - offsets[0]),
                                offset=int(offsets[0]))
            padded = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
            padded[:, :width] = raw[: n * width].reshape(n, width)
            words = padded.view("<u8")
            a = np.full(n, _SEEDS[0], dtype=np.uint64)
            b = np.full(n, _SEEDS[1], dtype=np.uint64)
            for i in range(words.shape[1]):
                a, b = _mix(a, words[:, i]), _mix(b, words[:, i] ^ _K1)
        else:
            a, b, _ = _column_digests(name, text)
    if column.null_count:
        nulls = pc.is_null(column).to_numpy(zero_copy_only=False)
        a, b = a.copy(), b.copy()
        a[nulls], b[nulls] = _NULL_LANES
    return a, b


def fingerprint(table: pa.Table) -> str:
    """A digest of a day's content (every stored column but the ingestion run, whatever the row order): equal
    means nothing to write. Each row is digested column by column in NumPy (two 64-bit lanes); the rows' digests
    are added up (a multiset hash), with the row count and column names, into BLAKE2b."""
    names = [c for c in table.column_names if c != "x_ingestion_run"]
    n = table.num_rows
    first = np.full(n, _SEEDS[0], dtype=np.uint64)
    second = np.full(n, _SEEDS[1], dtype=np.uint64)
    for name in names:
        salt = np.frombuffer(hashlib.blake2b(name.encode(), digest_size=16).digest(), dtype="<u8")
        a, b = _value_lanes(name, table[name].combine_chunks())
        first, second = _mix(first, a ^ salt[0]), _mix(second, b ^ salt[1])
    with np.errstate(over="ignore"):
        sums = np.array([first.sum(dtype=np.uint64), second.sum(dtype=np.uint64),
                         _mix(first, second).sum(dtype=np.uint64)], dtype="<u8")
    header = FINGERPRINT_SALT + n.to_bytes(8, "little") + "\x1f".join(names).encode()
    return hashlib.blake2b(header + sums.tobytes(), digest_size=16).hexdigest()


def day_of(table: pa.Table) -> pa.Array:
    """The UTC day (as a timestamp at midnight) of every row's ChargePeriodStart."""
    return pc.floor_temporal(table["ChargePeriodStart"].combine_chunks(), unit="day")


def decoded(table: pa.Table) -> pa.Table:
    """The table with dictionary-encoded columns (Parquet text read as dictionaries) as plain values."""
    columns = []
    for field_ in table.schema:
        column = table[field_.name]
        if pa.types.is_dictionary(field_.type):
            column = column.cast(field_.type.value_type)
        elif pa.types.is_map(field_.type) and (pa.types.is_dictionary(field_.type.key_type)
                                               or pa.types.is_dictionary(field_.type.item_type)):
            plain = pa.map_(_value_type(field_.type.key_type), _value_type(field_.type.item_type))
            column = pa.chunked_array([_plain_map(chunk, plain) for chunk in column.chunks], plain)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def _plain_map(chunk: pa.MapArray, type_: pa.DataType) -> pa.Array:
    keys, items = chunk.keys, chunk.items
    keys = keys.cast(type_.key_type) if pa.types.is_dictionary(keys.type) else keys
    items = items.cast(type_.item_type) if pa.types.is_dictionary(items.type) else items
    # a slice's offsets point into its whole children, which .keys and .items are
    return pa.MapArray.from_arrays(chunk.offsets, keys, items, type=type_,
                                   mask=chunk.is_null() if chunk.null_count else None)
