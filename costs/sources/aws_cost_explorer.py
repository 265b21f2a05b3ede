"""AWS Cost Explorer as a cost source: ``get_cost_and_usage``, DAILY, grouped by the project tag and SERVICE.

- No boto3 paginator exists for this call: the ``NextPageToken`` loop is ours (each page costs $0.01).
- Amounts arrive as strings and become Decimal directly. ``Estimated`` (recent days) is kept as ``x_estimated``;
  ingestion re-reads a trailing window so estimates are replaced by final amounts.
- A TAG group key reads ``<key>$<value>``; ``<key>$`` is untagged cost. Tags appear only once activated as
  cost-allocation tags in the billing console.
- Throttling (``LimitExceededException``, ``ThrottlingException``) is retried by botocore's standard retry mode
  with exponential backoff and jitter (``max_attempts`` below); what still fails fails the task, whose Airflow
  retries back off further.
- Aggregated results fill only part of FOCUS: ListCost and ContractedCost stay empty, ChargeCategory is Usage
  (Tax for the "Tax" service), the region is not grouped.

Credentials: the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, instance roles); none found means the source is unavailable (skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import Any

from costs.focus import CostDataError, CostRow, parse_amount, service_category
from costs.sources.base import CostSource

CE_REGION = "us-east-1"  # Cost Explorer's one endpoint
MAX_ATTEMPTS = 8


class AwsCostExplorerSource(CostSource):
    provider = "AWS"

    def __init__(self, name: str, *, tag_key: str, billed_metric: str = "UnblendedCost",
                 effective_metric: str = "AmortizedCost", billing_account_id: str = "aws-cost-explorer",
                 client: Any = None) -> None:
        super().__init__(name)
        self.tag_key = tag_key
        self.billed_metric = billed_metric
        self.effective_metric = effective_metric
        self.billing_account_id = billing_account_id
        self._client = client

    def unavailable(self) -> str | None:
        if self._client is not None:
            return None
        import boto3

        if boto3.Session().get_credentials() is None:
            return ("no AWS credentials (set the Airflow Connection, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "or AWS_PROFILE in the environment)")
        return None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("ce", region_name=CE_REGION,
                                        config=Config(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS}))
        return self._client

    def request(self, start: date, end: date) -> dict:
        metrics = list(dict.fromkeys([self.billed_metric, self.effective_metric]))
        return {
            "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
            "Granularity": "DAILY",
            "Metrics": metrics,
            "GroupBy": [{"Type": "TAG", "Key": self.tag_key}, {"Type": "DIMENSION", "Key": "SERVICE"}],
        }

    def rows(self, start: date, end: date) -> Iterator[CostRow]:
        request = self.request(start, end)
        token: str | None = None
        page = 0
        while True:
            page += 1
            response = self.client.get_cost_and_usage(**request, **({"NextPageToken": token} if token else {}))
            for result in response.get("ResultsByTime", []):
                yield from self._rows_of(result, page)
            token = response.get("NextPageToken")
            if not token:
                return

    def _rows_of(self, result: dict, page: int) -> Iterator[CostRow]:
        try:
            day = datetime.fromisoformat(result["TimePeriod"]["Start"])
            day_end = datetime.fromisoformat(result["TimePeriod"]["End"])
        except (KeyError, TypeError, ValueError):
            raise CostDataError(self.name, "ResultsByTime.TimePeriod", f"missing or not a date on page {page}",
                                record=result) from None
        estimated = bool(result.get("Estimated", False))
        for group in result.get("Groups", []):
            where = f"page {page}, {day.date()}, keys {group.get('Keys')}"
            keys = group.get("Keys") or []
            if len(keys) != 2:
                raise CostDataError(self.name, "Groups.Keys", f"expected [tag, service], got {keys!r}",
                                    location=where, record=group)
            tag, service = keys
            _, _, value = tag.partition("$")
            billed, unit = self._metric(group, self.billed_metric, where)
            effective, _ = self._metric(group, self.effective_metric, where)
            yield CostRow(
                billed_cost=billed,
                effective_cost=effective,
                billing_currency=unit,
                billing_account_id=self.billing_account_id,
                charge_period_start=day,
                charge_period_end=day_end,
                charge_category="Tax" if service == "Tax" else "Usage",
                charge_description=f"Cost Explorer {self.billed_metric} of {service}",
                provider_name="AWS",
                publisher_name="AWS",
                invoice_issuer_name="Amazon Web Services, Inc.",
                service_name=service,
                service_category=service_category(service),
                tags={self.tag_key: value} if value else {},
                x_estimated=estimated,
            )

    def _metric(self, group: dict, metric: str, where: str) -> tuple[Any, str]:
        try:
            entry = group["Metrics"][metric]
            amount, unit = entry["Amount"], entry["Unit"]
        except (KeyError, TypeError):
            raise CostDataError(self.name, f"Metrics.{metric}", "missing from the response", location=where,
                                record=group) from None
        return parse_amount(amount, self.name, f"Metrics.{metric}.Amount", location=where), unit
