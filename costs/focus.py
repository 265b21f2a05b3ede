"""The FOCUS column set, one cost row, and the checks every row passes before it is stored.

FOCUS (FinOps Open Cost and Usage Specification, v1.2) names the columns; the store keeps those names plus
``x_``-prefixed extras of ours (project, site, source, ingestion run, estimate flag). Rows from aggregated APIs
(Cost Explorer, Azure query) cannot fill every mandatory column, so the store is FOCUS-aligned, not conformant.

Amounts are ``Decimal`` from parsing to storage, never float. They are kept to ``AMOUNT_PLACES`` decimal places
(rounded half away from zero, as PostgreSQL's numeric does), the same on every database. Timestamps are naive
datetimes in UTC.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from functools import cache
from typing import Any

FOCUS_VERSION = "1.2"  # the newest version read; files of 1.0 and 1.1 are read too (see FOCUS_COLUMNS)
FOCUS_VERSIONS = ("1.0", "1.1", "1.2")
AMOUNT_PLACES = 10
QUANTITY_PLACES = 18  # quantities and unit prices: request counts in the billions, prices of 1e-10 USD per unit
_QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)
# The largest amount every store keeps exactly: SQLite holds 1e-10 units in a signed 64-bit integer.
MAX_AMOUNT = Decimal(2**63 - 1).scaleb(-AMOUNT_PLACES)
MAX_QUANTITY = Decimal("99999999999999999999.999999999999999999")  # the largest decimal128(38, 18) and NUMERIC(38, 18)

# Mandatory FOCUS columns (1.0 to 1.2): a FOCUS file without one of them is rejected as a whole.
MANDATORY_COLUMNS = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
)
# Every column of each FOCUS version (Cost and Usage dataset). 1.0 has 43; 1.1 adds 7; 1.2 adds 7 more (57).
_FOCUS_1_0 = (
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription",
    "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "CommitmentDiscountCategory", "CommitmentDiscountId",
    "CommitmentDiscountName", "CommitmentDiscountStatus", "CommitmentDiscountType", "ConsumedQuantity",
    "ConsumedUnit", "ContractedCost", "ContractedUnitPrice", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "ListUnitPrice", "PricingCategory", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName",
    "RegionId", "RegionName", "ResourceId", "ResourceName", "ResourceType", "ServiceCategory", "ServiceName",
    "SkuId", "SkuPriceId", "SubAccountId", "SubAccountName", "Tags",
)
_ADDED_1_1 = ("CapacityReservationId", "CapacityReservationStatus", "CommitmentDiscountQuantity",
              "CommitmentDiscountUnit", "ServiceSubcategory", "SkuMeter", "SkuPriceDetails")
_ADDED_1_2 = ("BillingAccountType", "InvoiceId", "PricingCurrency", "PricingCurrencyContractedUnitPrice",
              "PricingCurrencyEffectiveCost", "PricingCurrencyListUnitPrice", "SubAccountType")
FOCUS_COLUMNS: dict[str, tuple[str, ...]] = {
    "1.0": _FOCUS_1_0,
    "1.1": _FOCUS_1_0 + _ADDED_1_1,
    "1.2": _FOCUS_1_0 + _ADDED_1_1 + _ADDED_1_2,
}
ALL_FOCUS_COLUMNS = FOCUS_COLUMNS["1.2"]
# Kinds of columns. Money: Decimal with AMOUNT_PLACES; quantities and unit prices: Decimal with QUANTITY_PLACES.
MONEY_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "PricingCurrencyEffectiveCost")
QUANTITY_COLUMNS = ("PricingQuantity", "ConsumedQuantity", "CommitmentDiscountQuantity", "ListUnitPrice",
                    "ContractedUnitPrice", "PricingCurrencyContractedUnitPrice", "PricingCurrencyListUnitPrice")
TIMESTAMP_COLUMNS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
TEXT_COLUMNS = tuple(c for c in ALL_FOCUS_COLUMNS
                     if c not in MONEY_COLUMNS + QUANTITY_COLUMNS + TIMESTAMP_COLUMNS)
# Rows of one batch whose every other column is equal are one charge split over several lines: these add up.
ADDITIVE_COLUMNS = MONEY_COLUMNS + ("PricingQuantity", "ConsumedQuantity", "CommitmentDiscountQuantity")
# Conditional columns we keep when a file has them (kept for callers of the row API).
OPTIONAL_COLUMNS = tuple(c for c in ALL_FOCUS_COLUMNS if c not in MANDATORY_COLUMNS)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# CostRow attribute -> FOCUS column (or our x_ extra), in storage order.
COLUMNS: dict[str, str] = {
    **{_snake(c): c for c in ALL_FOCUS_COLUMNS},
    "x_project": "x_project",
    "x_site": "x_site",
    "x_estimated": "x_estimated",
}
AMOUNT_FIELDS = ("billed_cost", "effective_cost", "list_cost", "contracted_cost")
REQUIRED_AMOUNTS = ("billed_cost", "effective_cost")
TIMESTAMP_FIELDS = ("billing_period_start", "billing_period_end", "charge_period_start", "charge_period_end")
REQUIRED_TEXT = (
    "billing_currency",
    "billing_account_id",
    "charge_category",
    "provider_name",
    "service_name",
)
CHARGE_CATEGORIES = frozenset({"Usage", "Purchase", "Tax", "Credit", "Adjustment"})
CHARGE_CLASSES = frozenset({"Correction"})

# FOCUS ServiceCategory for the services our connectors see by name only (APIs that return no category).
_SERVICE_CATEGORIES = (
    (("machine learning", "sagemaker", "vertex", "bedrock", "cognitive", "openai"), "AI and Machine Learning"),
    (("compute", "virtual machine", "ec2", "lambda", "kubernetes", "container", "batch"), "Compute"),
    (("storage", "s3", "blob", "disk", "backup", "glacier"), "Storage"),
    (("sql", "database", "rds", "dynamodb", "bigtable", "spanner", "cosmos", "redshift"), "Databases"),
    (("network", "data transfer", "vpc", "cdn", "cloudfront", "load balanc", "dns", "bandwidth"), "Networking"),
    (("bigquery", "analytics", "athena", "glue", "dataflow", "synapse"), "Analytics"),
    (("cloudwatch", "monitor", "logging", "config", "cloudtrail", "support"), "Management and Governance"),
    (("kms", "key vault", "security", "guard", "secret", "waf"), "Security"),
)


class CostDataError(ValueError):
    """Bad cost data: says which source, which field and what is wrong (and where, when known)."""

    def __init__(self, source: str, field: str, problem: str, *, location: str | None = None,
                 record: Mapping[str, Any] | None = None) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.location = location
        self.record = dict(record) if record is not None else None
        where = f" ({location})" if location else ""
        super().__init__(f"source {source!r}{where}: field {field!r}: {problem}")


@dataclass(slots=True)
class CostRow:
    """One charge in FOCUS terms. Amounts are Decimal; timestamps naive UTC; tags a plain dict."""

    billed_cost: Decimal
    effective_cost: Decimal
    billing_currency: str
    charge_period_start: datetime
    charge_period_end: datetime
    provider_name: str
    service_name: str
    charge_category: str = "Usage"
    list_cost: Decimal | None = None
    contracted_cost: Decimal | None = None
    billing_account_id: str = "unknown"
    billing_account_name: str | None = None
    billing_period_start: datetime | None = None
    billing_period_end: datetime | None = None
    charge_class: str | None = None
    charge_description: str | None = None
    pricing_quantity: Decimal | None = None
    pricing_unit: str | None = None
    publisher_name: str | None = None
    invoice_issuer_name: str | None = None
    service_category: str | None = None
    region_id: str | None = None
    resource_id: str | None = None
    sku_id: str | None = None
    sub_account_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    x_project: str | None = None
    x_site: str | None = None
    x_estimated: bool = False
    # The other FOCUS 1.0-1.2 columns (aggregated APIs leave them empty; export files fill them).
    availability_zone: str | None = None
    billing_account_type: str | None = None
    capacity_reservation_id: str | None = None
    capacity_reservation_status: str | None = None
    charge_frequency: str | None = None
    commitment_discount_category: str | None = None
    commitment_discount_id: str | None = None
    commitment_discount_name: str | None = None
    commitment_discount_quantity: Decimal | None = None
    commitment_discount_status: str | None = None
    commitment_discount_type: str | None = None
    commitment_discount_unit: str | None = None
    consumed_quantity: Decimal | None = None
    consumed_unit: str | None = None
    contracted_unit_price: Decimal | None = None
    invoice_id: str | None = None
    list_unit_price: Decimal | None = None
    pricing_category: str | None = None
    pricing_currency: str | None = None
    pricing_currency_contracted_unit_price: Decimal | None = None
    pricing_currency_effective_cost: Decimal | None = None
    pricing_currency_list_unit_price: Decimal | None = None
    region_name: str | None = None
    resource_name: str | None = None
    resource_type: str | None = None
    service_subcategory: str | None = None
    sku_meter: str | None = None
    sku_price_details: str | None = None
    sku_price_id: str | None = None
    sub_account_name: str | None = None
    sub_account_type: str | None = None


@dataclass(frozen=True)
class TagRule:
    """Which tag names a row's project (and site): one key per provider, optionally compared case-insensitively.

    Providers spell tag keys differently (AWS and Azure ``Owner``, GCP labels ``owner``; AWS Data Exports prefix
    user tags with ``user:``). ``per_provider`` maps a FOCUS ProviderName to its key; other providers use
    ``default_key``. With ``case_insensitive`` the key matches whatever its case in the data.
    """

    default_key: str = "mledge-project"
    per_provider: Mapping[str, str] = field(default_factory=dict)
    case_insensitive: bool = False
    site_key: str = "mledge-site"

    def key_for(self, provider: str | None) -> str:
        return self.per_provider.get(provider or "", self.default_key)

    def lookup(self, tags: Mapping[str, str], key: str) -> str | None:
        """The value of ``key`` (or AWS's ``user:key``) in ``tags``; empty values count as absent."""
        value = tags.get(key)
        if value is None:
            value = tags.get(f"user:{key}")
        if value is None and self.case_insensitive:
            wanted = {key.casefold(), f"user:{key}".casefold()}
            value = next((v for k, v in tags.items() if k.casefold() in wanted and v), None)
        return value or None

    def project(self, tags: Mapping[str, str], provider: str | None) -> str | None:
        return self.lookup(tags, self.key_for(provider))

    def site(self, tags: Mapping[str, str]) -> str | None:
        return self.lookup(tags, self.site_key)


@cache
def known_currencies() -> frozenset[str]:
    """ISO 4217 alphabetic codes (from pycountry's copy of the ISO data)."""
    import pycountry

    return frozenset(c.alpha_3 for c in pycountry.currencies)


def service_category(service_name: str) -> str:
    """A FOCUS ServiceCategory guessed from a service's name, for APIs that return names only."""
    lowered = service_name.lower()
    for words, category in _SERVICE_CATEGORIES:
        if any(word in lowered for word in words):
            return category
    return "Other"


def project_of(tags: Mapping[str, str], tag_key: str) -> str | None:
    """The federated project a row belongs to: its ``tag_key`` tag (AWS exports write user tags as ``user:key``)."""
    return TagRule(tag_key).lookup(tags, tag_key)


def parse_amount(value: Any, source: str, field_name: str, *, location: str | None = None,
                 required: bool = True) -> Decimal | None:
    """A Decimal from text, int or Decimal (a float goes through its shortest repr); a clear error otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise CostDataError(source, field_name, "is empty", location=location)
        return None
    if isinstance(value, bool):
        raise CostDataError(source, field_name, f"{value!r} is not a number", location=location)
    if isinstance(value, float):
        value = repr(value)  # Parquet doubles: their shortest decimal form, never binary float arithmetic
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError, ValueError):
        raise CostDataError(source, field_name, f"{value!r} is not a number", location=location) from None
    if not amount.is_finite():
        raise CostDataError(source, field_name, f"{value!r} is not a finite number", location=location)
    check_range(amount, source, field_name, location=location)
    return amount.quantize(_QUANTUM, rounding=ROUND_HALF_UP, context=_WIDE)


_WIDE = Context(prec=60)


def check_range(amount: Decimal, source: str, field_name: str, *, location: str | None = None,
                limit: Decimal = MAX_AMOUNT) -> None:
    """Refuse an amount the store cannot keep exactly (it would overflow SQLite's 64-bit units)."""
    if abs(amount) > limit:
        raise CostDataError(source, field_name, f"{amount} is out of range (the store keeps amounts up to "
                            f"±{limit})", location=location)


def parse_timestamp(value: Any, source: str, field_name: str, *, location: str | None = None) -> datetime:
    """Naive UTC from an ISO 8601 text (``Z``, offsets, BigQuery's `` UTC`` suffix) or a datetime."""
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, date):
        stamp = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith(" UTC"):
            text = text[:-4] + "+00:00"
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise CostDataError(source, field_name, f"{value!r} is not an ISO 8601 timestamp",
                                location=location) from None
    else:
        raise CostDataError(source, field_name, "is empty" if not value else f"{value!r} is not a timestamp",
                            location=location)
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp


def parse_tags(value: Any, source: str, *, location: str | None = None) -> dict[str, str]:
    """Tags as a dict: a JSON object text, a mapping, or Parquet's map (a list of key/value pairs)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CostDataError(source, "Tags", f"is not JSON: {exc.msg}", location=location) from None
    if isinstance(value, list):  # Parquet map<string,string> comes back as [(key, value), ...]
        try:
            value = dict(value)
        except (TypeError, ValueError):
            raise CostDataError(source, "Tags", "is not a list of key/value pairs", location=location) from None
    if not isinstance(value, Mapping):
        raise CostDataError(source, "Tags", f"is a {type(value).__name__}, not an object", location=location)
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def validate(row: CostRow, source: str, *, location: str | None = None) -> CostRow:
    """Check one row in place (types, currency, categories, periods); raise ``CostDataError`` on the first fault."""
    for name in AMOUNT_FIELDS:
        amount = getattr(row, name)
        if amount is None:
            if name in REQUIRED_AMOUNTS:
                raise CostDataError(source, COLUMNS[name], "is empty", location=location)
            continue
        if not isinstance(amount, Decimal):  # floats must never reach the store
            raise CostDataError(source, COLUMNS[name], f"is a {type(amount).__name__}, not a Decimal",
                                location=location)
        if not amount.is_finite():
            raise CostDataError(source, COLUMNS[name], f"{amount} is not a finite number", location=location)
        check_range(amount, source, COLUMNS[name], location=location)
        # More than AMOUNT_PLACES places are rounded by the store (half away from zero, on every database).
    for column in MONEY_COLUMNS + QUANTITY_COLUMNS:
        name = _snake(column)
        if name in AMOUNT_FIELDS:
            continue
        value = getattr(row, name)
        if value is None:
            continue
        if not isinstance(value, Decimal) or not value.is_finite():
            raise CostDataError(source, column, f"{value!r} is not a finite Decimal", location=location)
        check_range(value, source, column, location=location,
                    limit=MAX_AMOUNT if column in MONEY_COLUMNS else MAX_QUANTITY)
    for name in REQUIRED_TEXT:
        if not getattr(row, name):
            raise CostDataError(source, COLUMNS[name], "is empty", location=location)
    if row.billing_currency not in known_currencies():
        raise CostDataError(source, "BillingCurrency", f"{row.billing_currency!r} is not an ISO 4217 currency code",
                            location=location)
    if row.charge_category not in CHARGE_CATEGORIES:
        raise CostDataError(source, "ChargeCategory", f"{row.charge_category!r} is not one of "
                            f"{', '.join(sorted(CHARGE_CATEGORIES))}", location=location)
    if row.charge_class is not None and row.charge_class not in CHARGE_CLASSES:
        raise CostDataError(source, "ChargeClass", f"{row.charge_class!r} is neither empty nor 'Correction'",
                            location=location)
    if not isinstance(row.charge_period_start, datetime) or not isinstance(row.charge_period_end, datetime):
        raise CostDataError(source, "ChargePeriodStart", "is not a datetime", location=location)
    if row.charge_period_end < row.charge_period_start:
        raise CostDataError(source, "ChargePeriodEnd", f"{row.charge_period_end} is before ChargePeriodStart "
                            f"{row.charge_period_start}", location=location)
    if row.billing_period_start is None or row.billing_period_end is None:
        # aggregated APIs: the calendar month of the charge is the billing period
        first = row.charge_period_start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        row.billing_period_start = row.billing_period_start or first
        row.billing_period_end = row.billing_period_end or (first + timedelta(days=32)).replace(day=1)
    return row


def day_start(day: date) -> datetime:
    """Midnight UTC of a day, as the naive datetime the store keeps."""
    return datetime(day.year, day.month, day.day)
