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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from typing import Any

FOCUS_VERSION = "1.2"
AMOUNT_PLACES = 10
_QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)

# Mandatory FOCUS 1.2 columns: a FOCUS file without one of them is rejected as a whole.
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
# Conditional columns we keep when a file has them.
OPTIONAL_COLUMNS = ("RegionId", "ResourceId", "SkuId", "SubAccountId", "Tags")

# CostRow attribute -> FOCUS column (or our x_ extra), in storage order.
COLUMNS: dict[str, str] = {
    "billed_cost": "BilledCost",
    "effective_cost": "EffectiveCost",
    "list_cost": "ListCost",
    "contracted_cost": "ContractedCost",
    "billing_currency": "BillingCurrency",
    "billing_account_id": "BillingAccountId",
    "billing_account_name": "BillingAccountName",
    "billing_period_start": "BillingPeriodStart",
    "billing_period_end": "BillingPeriodEnd",
    "charge_period_start": "ChargePeriodStart",
    "charge_period_end": "ChargePeriodEnd",
    "charge_category": "ChargeCategory",
    "charge_class": "ChargeClass",
    "charge_description": "ChargeDescription",
    "pricing_quantity": "PricingQuantity",
    "pricing_unit": "PricingUnit",
    "provider_name": "ProviderName",
    "publisher_name": "PublisherName",
    "invoice_issuer_name": "InvoiceIssuerName",
    "service_category": "ServiceCategory",
    "service_name": "ServiceName",
    "region_id": "RegionId",
    "resource_id": "ResourceId",
    "sku_id": "SkuId",
    "sub_account_id": "SubAccountId",
    "tags": "Tags",
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
    value = tags.get(tag_key)
    if value is None:
        value = tags.get(f"user:{tag_key}")
    return value or None


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
    return amount.quantize(_QUANTUM, rounding=ROUND_HALF_UP)


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
        # More than AMOUNT_PLACES places are rounded by the store (half away from zero, on every database).
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
