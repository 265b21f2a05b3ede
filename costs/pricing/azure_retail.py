"""Azure Retail Prices API (``https://prices.azure.com/api/retail/prices``, no authentication) for Linux
on-demand VM prices.

One filtered query per region (``serviceName``, ``armRegionName``, ``priceType eq 'Consumption'`` and the
catalogued ``armSkuName`` values; filter values are case-sensitive), following ``NextPageLink``. Windows, Spot and
Low Priority meters are dropped: what is left is the Linux pay-as-you-go hour. The API does not state sizes, so
vCPU, memory and GPU come from the catalogue's existing rows. Prices are parsed from the JSON as Decimal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

from costs.catalog import Offer
from costs.focus import CostDataError, parse_amount
from costs.pricing import RefreshResult

RETAIL_URL = "https://prices.azure.com/api/retail/prices"
SOURCE = "Azure Retail Prices API"
MAX_PAGES = 50
TIMEOUT_S = 30


def _usable(item: dict) -> bool:
    text = " ".join(str(item.get(k, "")) for k in ("productName", "skuName", "meterName"))
    return (item.get("type") == "Consumption" and item.get("unitOfMeasure") == "1 Hour"
            and "Windows" not in text and "Spot" not in text and "Low Priority" not in text)


class AzureRetailPrices:
    source_name = SOURCE

    def __init__(self, session: Any = None, url: str = RETAIL_URL) -> None:
        self._session = session
        self.url = url

    def unavailable(self) -> str | None:
        return None  # a public API

    @property
    def session(self) -> Any:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def filter(self, region: str, skus: Sequence[str]) -> str:
        names = " or ".join(f"armSkuName eq '{s}'" for s in sorted(skus))
        return (f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' and priceType eq 'Consumption'"
                f" and ({names})")

    def items(self, region: str, skus: Sequence[str]) -> list[dict]:
        url, params = self.url, {"$filter": self.filter(region, skus)}
        items: list[dict] = []
        for _ in range(MAX_PAGES):
            response = self.session.get(url, params=params, timeout=TIMEOUT_S)
            response.raise_for_status()
            body = json.loads(response.text, parse_float=Decimal)
            if "Items" not in body:
                raise CostDataError(SOURCE, "Items", "missing from the response", location=region)
            items += body["Items"]
            url, params = body.get("NextPageLink"), None  # the link carries the filter and the page
            if not url:
                return items
        raise CostDataError(SOURCE, "NextPageLink", f"more than {MAX_PAGES} pages", location=region)

    def fetch(self, known: Sequence[Offer], today: date) -> RefreshResult:
        result = RefreshResult()
        by_region: dict[str, dict[str, Offer]] = {}
        for offer in known:
            by_region.setdefault(offer.region, {})[offer.instance_type] = offer
        for region, offers in sorted(by_region.items()):
            prices: dict[str, Decimal] = {}
            for item in self.items(region, list(offers)):
                sku = item.get("armSkuName")
                if sku in offers and _usable(item):
                    price = parse_amount(item.get("retailPrice"), SOURCE, "retailPrice", location=f"{sku} {region}")
                    prices[sku] = min(price, prices.get(sku, price))  # several Linux meters: the cheapest
            for sku, offer in sorted(offers.items()):
                if sku in prices:
                    result.offers.append(replace(offer, usd_per_hour=prices[sku], as_of=today, source=SOURCE))
                else:
                    result.not_found.append(f"{sku} in {region}")
        return result
