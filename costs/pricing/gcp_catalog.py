"""GCP Cloud Billing Catalog API (``services/6F81-5844-456A/skus``, Compute Engine) for on-demand VM prices.

Compute Engine is priced per resource: a machine type's hourly price is vCPUs × the family's core SKU plus
GiB × its RAM SKU, in the region (``serviceRegions``); a GPU is its own SKU (catalogue rows ``accelerator:T4``).
Only ``usageType == "OnDemand"`` SKUs count (no Spot/Preemptible, no commitments). Unit prices are
``units + nanos × 1e-9`` (exact Decimal). The API needs an API key: ``GCP_PRICING_API_KEY`` (or
``GOOGLE_API_KEY``); without one the refresh is skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

from costs.catalog import ACCELERATOR_PREFIX, Offer
from costs.focus import CostDataError
from costs.pricing import RefreshResult

SKUS_URL = "https://cloudbilling.googleapis.com/v1/services/6F81-5844-456A/skus"
SOURCE = "GCP Cloud Billing Catalog API"
MAX_PAGES = 200
TIMEOUT_S = 30
# Machine family -> the words its core and RAM SKU descriptions start with.
FAMILIES = {"n1": "N1 Predefined Instance", "n2": "N2 Instance", "e2": "E2 Instance", "g2": "G2 Instance",
            "n2d": "N2D AMD Instance"}
_GPU = re.compile(r"^Nvidia (?:Tesla )?(?P<model>[A-Z0-9]+) GPU running in ")


def _unit_price(sku: dict) -> Decimal:
    try:
        rates = sku["pricingInfo"][0]["pricingExpression"]["tieredRates"]
        price = rates[-1]["unitPrice"]  # the steady-state tier (a first tier may be free)
        return Decimal(str(price.get("units") or "0")) + Decimal(int(price.get("nanos") or 0)).scaleb(-9)
    except (KeyError, IndexError, TypeError, ValueError):
        raise CostDataError(SOURCE, "pricingInfo.pricingExpression.tieredRates", "missing or unreadable",
                            location=sku.get("skuId")) from None


class GcpCatalog:
    source_name = SOURCE

    def __init__(self, api_key: str | None = None, session: Any = None, url: str = SKUS_URL) -> None:
        self.api_key = api_key or os.environ.get("GCP_PRICING_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        self._session = session
        self.url = url

    def unavailable(self) -> str | None:
        if not self.api_key:
            return "no API key for the Cloud Billing Catalog API (GCP_PRICING_API_KEY or GOOGLE_API_KEY)"
        return None

    @property
    def session(self) -> Any:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def skus(self) -> list[dict]:
        skus: list[dict] = []
        token = ""
        for _ in range(MAX_PAGES):
            params = {"key": self.api_key, "currencyCode": "USD", "pageSize": 5000}
            if token:
                params["pageToken"] = token
            response = self.session.get(self.url, params=params, timeout=TIMEOUT_S)
            response.raise_for_status()
            body = response.json()
            skus += body.get("skus", [])
            token = body.get("nextPageToken", "")
            if not token:
                return skus
        raise CostDataError(SOURCE, "nextPageToken", f"more than {MAX_PAGES} pages")

    def rates(self, skus: Sequence[dict]) -> dict[tuple[str, str, str], Decimal]:
        """(kind, family-or-GPU model, region) -> hourly unit price; kind is core, ram or gpu."""
        rates: dict[tuple[str, str, str], Decimal] = {}
        for sku in skus:
            category = sku.get("category", {})
            if category.get("usageType") != "OnDemand" or category.get("resourceFamily") != "Compute":
                continue
            description = sku.get("description", "")
            keys: list[tuple[str, str]] = []
            for family, words in FAMILIES.items():
                if description.startswith(f"{words} Core running in"):
                    keys.append(("core", family))
                elif description.startswith(f"{words} Ram running in"):
                    keys.append(("ram", family))
            gpu = _GPU.match(description)
            if gpu:
                keys.append(("gpu", gpu["model"]))
            for kind, name in keys:
                for region in sku.get("serviceRegions", []):
                    rates[(kind, name, region)] = _unit_price(sku)
        return rates

    def fetch(self, known: Sequence[Offer], today: date) -> RefreshResult:
        rates = self.rates(self.skus())
        result = RefreshResult()
        for offer in known:
            if offer.instance_type.startswith(ACCELERATOR_PREFIX):
                price = rates.get(("gpu", offer.gpu_model or "", offer.region))
            else:
                family = offer.instance_type.split("-")[0]
                core, ram = rates.get(("core", family, offer.region)), rates.get(("ram", family, offer.region))
                price = None if core is None or ram is None else (
                    core * offer.vcpu + ram * Decimal(str(offer.memory_gib)))
            if price is None:
                result.not_found.append(f"{offer.instance_type} in {offer.region}")
            else:
                result.offers.append(replace(offer, usd_per_hour=price.quantize(Decimal("1E-10")), as_of=today,
                                             source=SOURCE))
        return result
