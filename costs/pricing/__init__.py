"""Price refresh connectors, one per provider's own price API, each tested offline against the real client.

Every connector refreshes the instance types the catalogue already knows (sizes come from the catalogue where
the price API does not state them) and returns dated offers plus what it could not find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from costs.catalog import Offer


@dataclass
class RefreshResult:
    offers: list[Offer] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def connector(provider: str, **options: Any):
    """The refresh connector for ``provider`` (aws, azure, gcp); options go to its constructor (clients, keys)."""
    if provider == "aws":
        from costs.pricing.aws_price_list import AwsPriceList

        return AwsPriceList(**options)
    if provider == "azure":
        from costs.pricing.azure_retail import AzureRetailPrices

        return AzureRetailPrices(**options)
    if provider == "gcp":
        from costs.pricing.gcp_catalog import GcpCatalog

        return GcpCatalog(**options)
    raise ValueError(f"no price connector for {provider!r}")
