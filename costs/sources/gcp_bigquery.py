"""GCP Cloud Billing export in BigQuery as a cost source (google-cloud-bigquery, one parameterised query per call).

- The standard usage cost export (``gcp_billing_export_v1_<ACCOUNT>``) is partitioned by ingestion time, and
  the cost of a usage day can land in later partitions: the query scans ``_PARTITIONTIME`` from one day before
  the usage window to ``PARTITION_SLACK_DAYS`` after it, and filters on ``usage_start_time`` for the window.
- The project comes from one label read with a scalar subquery over ``labels`` (a CROSS JOIN UNNEST would
  repeat a row once per label and double-count it).
- Credits (sustained and committed use discounts, promotions; negative amounts) are summed per row group and
  returned as separate FOCUS rows with ChargeCategory Credit, so totals are net: cost + credits.
- Amounts are summed as BigQuery NUMERIC, which the client returns as Decimal.

Credentials: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS`` or gcloud's); none found, or
no table configured, means the source is unavailable (skipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from costs.focus import CostDataError, CostRow, parse_amount, service_category
from costs.sources.base import CostSource

PARTITION_SLACK_DAYS = 5
SITE_LABEL = "mledge-site"
# project.dataset.table with BigQuery's characters only: the table name cannot be a query parameter.
_TABLE = re.compile(r"^[A-Za-z0-9_.:-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_$]+$")
_CHARGE_CATEGORY = {"regular": "Usage", "tax": "Tax", "adjustment": "Adjustment", "rounding error": "Adjustment"}

QUERY = """
SELECT
  DATE(usage_start_time) AS usage_day,
  billing_account_id,
  project.id AS project_id,
  service.description AS service,
  sku.id AS sku_id,
  sku.description AS sku_description,
  location.region AS region,
  (SELECT value FROM UNNEST(labels) WHERE key = @tag_key LIMIT 1) AS project_label,
  (SELECT value FROM UNNEST(labels) WHERE key = @site_key LIMIT 1) AS site_label,
  currency,
  cost_type,
  usage.pricing_unit AS pricing_unit,
  SUM(CAST(cost AS NUMERIC)) AS cost,
  SUM(CAST(IFNULL(cost_at_list, cost) AS NUMERIC)) AS list_cost,
  SUM(IFNULL((SELECT SUM(CAST(c.amount AS NUMERIC)) FROM UNNEST(credits) AS c), 0)) AS credits,
  SUM(CAST(usage.amount_in_pricing_units AS NUMERIC)) AS quantity
FROM `{table}`
WHERE _PARTITIONTIME >= @partition_start AND _PARTITIONTIME < @partition_end
  AND usage_start_time >= @usage_start AND usage_start_time < @usage_end
GROUP BY usage_day, billing_account_id, project_id, service, sku_id, sku_description, region, project_label,
  site_label, currency, cost_type, pricing_unit
ORDER BY usage_day, service, sku_id
"""


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class GcpBillingExportSource(CostSource):
    provider = "Google Cloud"

    def __init__(self, name: str, *, table: str, tag_key: str, project: str | None = None,
                 location: str | None = None, client: Any = None) -> None:
        super().__init__(name)
        self.table = table.strip().strip("`")
        self.tag_key = tag_key
        self.project = project
        self.location = location
        self._client = client

    def unavailable(self) -> str | None:
        if not self.table:
            return "no billing export table configured (source option 'table' or MLEDGE_GCP_BILLING_TABLE)"
        if self._client is not None:
            return None
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            google.auth.default(scopes=["https://www.googleapis.com/auth/bigquery.readonly"])
        except DefaultCredentialsError:
            return ("no Google credentials (set the Airflow Connection, or GOOGLE_APPLICATION_CREDENTIALS in the "
                    "environment)")
        return None

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import bigquery

            self._client = bigquery.Client(project=self.project)
        return self._client

    def query(self) -> str:
        if not _TABLE.match(self.table):
            raise CostDataError(self.name, "table", f"{self.table!r} is not a BigQuery table id "
                                "(project.dataset.table)")
        return QUERY.format(table=self.table)

    def job_config(self, start: date, end: date) -> Any:
        from google.cloud import bigquery

        return bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("tag_key", "STRING", self.tag_key),
            bigquery.ScalarQueryParameter("site_key", "STRING", SITE_LABEL),
            bigquery.ScalarQueryParameter("usage_start", "TIMESTAMP", _midnight(start)),
            bigquery.ScalarQueryParameter("usage_end", "TIMESTAMP", _midnight(end)),
            bigquery.ScalarQueryParameter("partition_start", "TIMESTAMP", _midnight(start - timedelta(days=1))),
            bigquery.ScalarQueryParameter("partition_end", "TIMESTAMP",
                                          _midnight(end + timedelta(days=PARTITION_SLACK_DAYS))),
        ])

    def rows(self, start: date, end: date) -> Iterator[CostRow]:
        job = self.client.query(self.query(), job_config=self.job_config(start, end), location=self.location)
        for number, record in enumerate(job.result(), start=1):
            yield from self._rows_of(dict(record.items()), number)

    def _rows_of(self, record: dict, number: int) -> Iterator[CostRow]:
        where = f"result row {number}"
        day = record.get("usage_day")
        if not isinstance(day, date):
            raise CostDataError(self.name, "usage_day", f"{day!r} is not a date", location=where, record=record)
        service = record.get("service") or ""
        cost_type = (record.get("cost_type") or "regular").lower()
        category = _CHARGE_CATEGORY.get(cost_type)
        if category is None:
            raise CostDataError(self.name, "cost_type", f"{cost_type!r} is not a known cost type", location=where,
                                record=record)
        tags = {}
        if record.get("project_label"):
            tags[self.tag_key] = record["project_label"]
        if record.get("site_label"):
            tags[SITE_LABEL] = record["site_label"]
        common = {
            "billing_currency": record.get("currency") or "",
            "billing_account_id": record.get("billing_account_id") or "",
            "charge_period_start": datetime(day.year, day.month, day.day),
            "charge_period_end": datetime(day.year, day.month, day.day) + timedelta(days=1),
            "provider_name": "Google Cloud",
            "publisher_name": "Google Cloud",
            "invoice_issuer_name": "Google",
            "service_name": service,
            "service_category": service_category(service),
            "region_id": record.get("region"),
            "sku_id": record.get("sku_id"),
            "sub_account_id": record.get("project_id"),
            "tags": tags,
        }
        cost = parse_amount(record.get("cost"), self.name, "cost", location=where)
        yield CostRow(
            billed_cost=cost,
            effective_cost=cost,
            list_cost=parse_amount(record.get("list_cost"), self.name, "cost_at_list", location=where,
                                   required=False),
            pricing_quantity=parse_amount(record.get("quantity"), self.name, "usage.amount_in_pricing_units",
                                          location=where, required=False),
            pricing_unit=record.get("pricing_unit"),
            charge_category=category,
            charge_description=record.get("sku_description"),
            **common,
        )
        credits = parse_amount(record.get("credits"), self.name, "credits.amount", location=where, required=False)
        if credits:
            yield CostRow(
                billed_cost=credits,
                effective_cost=credits,
                charge_category="Credit",
                charge_description=f"Credits on {record.get('sku_description') or service}",
                **common,
            )
