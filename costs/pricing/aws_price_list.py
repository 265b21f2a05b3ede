"""AWS Price List API (boto3 ``pricing.get_products``, paginated) for on-demand Linux EC2 prices.

Filters (TERM_MATCH): instanceType, operatingSystem=Linux, tenancy=Shared, preInstalledSw=NA,
capacitystatus=Used (the plain on-demand product, not reservations' or dedicated hosts' lines). Each PriceList
item is a JSON string, parsed here with Decimal numbers; the hourly price is the OnDemand term's USD
``pricePerUnit``. The API lives in us-east-1 and needs AWS credentials (any principal with pricing:GetProducts).
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

SOURCE = "AWS Price List API (pricing.get_products)"
FIXED_FILTERS = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
# The Price List names GPU memory, not the GPU: the model comes from the family.
GPU_MODELS = {"g4dn": "T4", "g5": "A10G", "g6": "L4", "g6e": "L40S", "p3": "V100", "p4d": "A100", "p5": "H100"}


class AwsPriceList:
    source_name = SOURCE

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def unavailable(self) -> str | None:
        if self._client is not None:
            return None
        import boto3

        if boto3.Session().get_credentials() is None:
            return "no AWS credentials for the Price List API (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
        return None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("pricing", region_name="us-east-1")
        return self._client

    def filters(self, instance_type: str) -> list[dict]:
        return [{"Type": "TERM_MATCH", "Field": k, "Value": v}
                for k, v in {"instanceType": instance_type, **FIXED_FILTERS}.items()]

    def fetch(self, known: Sequence[Offer], today: date) -> RefreshResult:
        result = RefreshResult()
        wanted = {(o.instance_type, o.region): o for o in known}
        for instance_type in sorted({o.instance_type for o in known}):
            seen = set()
            pages = self.client.get_paginator("get_products").paginate(ServiceCode="AmazonEC2",
                                                                         Filters=self.filters(instance_type))
            for page in pages:
                for item in page.get("PriceList", []):
                    offer = self.parse(item, today)
                    if offer and (offer.instance_type, offer.region) in wanted:
                        known_offer = wanted[(offer.instance_type, offer.region)]
                        result.offers.append(replace(offer, gpu_model=offer.gpu_model or known_offer.gpu_model))
                        seen.add(offer.region)
            result.not_found += [f"{instance_type} in {region}" for (t, region) in wanted
                                 if t == instance_type and region not in seen]
        return result

    def parse(self, item: str | dict, today: date) -> Offer | None:
        """One PriceList entry as an offer (None for a product that is not a plain compute instance)."""
        product = json.loads(item, parse_float=Decimal) if isinstance(item, str) else item
        attributes = product.get("product", {}).get("attributes", {})
        instance_type = attributes.get("instanceType")
        if not instance_type or "regionCode" not in attributes:
            return None
        where = f"{instance_type} in {attributes['regionCode']}"
        try:
            (term,) = product["terms"]["OnDemand"].values()
            (dimension,) = term["priceDimensions"].values()
            usd = dimension["pricePerUnit"]["USD"]
        except (KeyError, ValueError, AttributeError):
            raise CostDataError(SOURCE, "terms.OnDemand.priceDimensions.pricePerUnit.USD",
                                "missing or not exactly one on-demand price", location=where) from None
        memory = str(attributes.get("memory", "0")).replace("GiB", "").replace(",", "").strip()
        try:
            vcpu, memory_gib = int(attributes["vcpu"]), float(memory)
            gpus = int(attributes.get("gpu") or 0)
        except (KeyError, ValueError):
            raise CostDataError(SOURCE, "attributes.vcpu/memory/gpu", f"unreadable in {attributes}",
                                location=where) from None
        family = instance_type.split(".")[0]
        return Offer(
            provider="aws", region=attributes["regionCode"], instance_type=instance_type, vcpu=vcpu,
            memory_gib=memory_gib, gpu_count=gpus, gpu_model=GPU_MODELS.get(family) if gpus else None,
            usd_per_hour=parse_amount(usd, SOURCE, "pricePerUnit.USD", location=where), as_of=today,
            source=SOURCE,
        )
