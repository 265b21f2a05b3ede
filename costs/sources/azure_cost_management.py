"""Azure Cost Management as a cost source: ``query.usage`` (azure-mgmt-costmanagement 5.x), daily, grouped by
the project tag (grouping type ``TagKey``; ``Tag`` is rejected) and ``ServiceName``.

- Paging: the SDK does not follow ``nextLink``; its ``$skiptoken`` is passed back through ``params``.
- Throttling is strict (HTTP 429 after a few calls per minute and scope): azure-core's retry policy waits as the
  ``Retry-After`` header says (``retry_total`` attempts), then the task fails and Airflow retries it later.
- Amounts: the response body is parsed here with ``parse_float=Decimal`` (through the operation's ``cls`` hook),
  so no amount ever passes through a float.
- Rows are mapped by column name (the response lists its columns): the cost column (``Cost``/``PreTaxCost``),
  ``UsageDate`` (a number like 20261101), ``TagKey``/``TagValue``, ``ServiceName``, ``Currency``.

Credentials: a service principal in ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID`` and ``AZURE_CLIENT_SECRET`` (or
``AZURE_CLIENT_CERTIFICATE_PATH``, or workload identity's ``AZURE_FEDERATED_TOKEN_FILE``); the role Cost Management
Reader on the scope. Without them, or without a scope, the source is unavailable (skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlparse

from costs.focus import CostDataError, CostRow, parse_amount, service_category
from costs.sources.base import CostSource

RETRY_TOTAL = 6
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "totalCost")


class AzureCostManagementSource(CostSource):
    provider = "Microsoft"

    def __init__(self, name: str, *, scope: str, tag_key: str, cost_type: str = "ActualCost",
                 client: Any = None) -> None:
        super().__init__(name)
        self.scope = scope.strip()
        self.tag_key = tag_key
        self.cost_type = cost_type
        self._client = client

    def unavailable(self) -> str | None:
        if not self.scope:
            return "no Cost Management scope configured (source option 'scope', AZURE_COST_SCOPE or " \
                   "AZURE_SUBSCRIPTION_ID)"
        if self._client is not None:
            return None
        env = os.environ
        has_secret = any(env.get(k) for k in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                                               "AZURE_FEDERATED_TOKEN_FILE"))
        if not (env.get("AZURE_CLIENT_ID") and env.get("AZURE_TENANT_ID") and has_secret):
            return ("no Azure credentials (set the Airflow Connection, or AZURE_CLIENT_ID, AZURE_TENANT_ID and "
                    "AZURE_CLIENT_SECRET in the environment)")
        return None

    @property
    def client(self) -> Any:
        if self._client is None:
            from azure.identity import EnvironmentCredential, WorkloadIdentityCredential
            from azure.mgmt.costmanagement import CostManagementClient

            credential = (WorkloadIdentityCredential() if os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
                          else EnvironmentCredential())
            self._client = CostManagementClient(credential, retry_total=RETRY_TOTAL)
        return self._client

    def definition(self, start: date, end: date) -> Any:
        from azure.mgmt.costmanagement.models import (
            QueryAggregation,
            QueryDataset,
            QueryDefinition,
            QueryGrouping,
            QueryTimePeriod,
        )

        return QueryDefinition(
            type=self.cost_type,
            timeframe="Custom",
            # Azure's "to" is inclusive: the last second of the window's last day.
            time_period=QueryTimePeriod(from_property=datetime(start.year, start.month, start.day),
                                        to=datetime(end.year, end.month, end.day) - timedelta(seconds=1)),
            dataset=QueryDataset(
                granularity="Daily",
                aggregation={"totalCost": QueryAggregation(name="Cost", function="Sum")},
                grouping=[QueryGrouping(type="TagKey", name=self.tag_key),
                          QueryGrouping(type="Dimension", name="ServiceName")],
            ),
        )

    def rows(self, start: date, end: date) -> Iterator[CostRow]:
        definition = self.definition(start, end)
        token: str | None = None
        page = 0
        while True:
            page += 1
            kwargs: dict[str, Any] = {"cls": _raw_json}
            if token:
                kwargs["params"] = {"$skiptoken": token}
            body = self.client.query.usage(self.scope, definition, **kwargs)
            properties = body.get("properties", body) if isinstance(body, dict) else {}
            yield from self._rows_of(properties, page)
            token = _skiptoken(properties.get("nextLink"))
            if not token:
                return

    def _rows_of(self, properties: dict, page: int) -> Iterator[CostRow]:
        columns = [c.get("name") for c in properties.get("columns") or []]
        index = {name: i for i, name in enumerate(columns)}
        cost_column = next((c for c in COST_COLUMNS if c in index), None)
        for required, present in (("cost (Cost/PreTaxCost)", cost_column), ("UsageDate", "UsageDate" in index),
                                  ("Currency", "Currency" in index), ("ServiceName", "ServiceName" in index)):
            if not present:
                raise CostDataError(self.name, f"columns.{required}", f"missing from page {page} "
                                    f"(columns: {', '.join(map(str, columns))})")
        for number, values in enumerate(properties.get("rows") or [], start=1):
            where = f"page {page}, row {number}"
            record = dict(zip(columns, values, strict=False))
            day = _usage_date(record.get("UsageDate"), self.name, where)
            tag_key = record.get("TagKey")  # Azure tag names are case-insensitive
            tag_value = record.get("TagValue") if tag_key is None or str(tag_key).lower() == self.tag_key.lower() \
                else None
            service = record.get("ServiceName") or ""
            cost = parse_amount(record.get(cost_column), self.name, cost_column, location=where)
            yield CostRow(
                billed_cost=cost,
                effective_cost=cost,
                billing_currency=record.get("Currency") or "",
                billing_account_id=self.scope,
                charge_period_start=day,
                charge_period_end=day + timedelta(days=1),
                charge_category="Usage",
                charge_description=f"Cost Management {self.cost_type} of {service}",
                provider_name="Microsoft",
                publisher_name="Microsoft",
                invoice_issuer_name="Microsoft",
                service_name=service,
                service_category=service_category(service),
                tags={self.tag_key: str(tag_value)} if tag_value else {},
            )


def _raw_json(pipeline_response: Any, _deserialized: Any, _headers: Any) -> dict:
    """The operation's ``cls`` hook: the body parsed with Decimal numbers instead of the SDK's floats."""
    return json.loads(pipeline_response.http_response.text(), parse_float=Decimal)


def _skiptoken(next_link: str | None) -> str | None:
    if not next_link:
        return None
    values = parse_qs(urlparse(next_link).query).get("$skiptoken")
    return values[0] if values else None


def _usage_date(value: Any, source: str, where: str) -> datetime:
    text = str(value) if isinstance(value, int | Decimal) else value
    if isinstance(text, str) and len(text) == 8 and text.isdigit():
        try:
            return datetime.strptime(text, "%Y%m%d")
        except ValueError:
            pass
    if isinstance(text, str):  # some API versions return ISO dates
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
        except ValueError:
            pass
    raise CostDataError(source, "UsageDate", f"{value!r} is not a date like 20261101", location=where)
