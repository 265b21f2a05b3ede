"""Price refresh connectors, one per provider's own price API, each tested offline against the real client.

Every connector refreshes the instance types the catalogue already knows (sizes come from the catalogue where
the price API does not state them) and returns dated offers plus what it could not find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from costs.catalog import PROVIDERS, Offer, load_offers, upsert_offers
from costs.store import CostStore


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


def refresh(store: CostStore, provider: str, *, today: date | None = None, **connector_options) -> dict:
    """Replace one provider's catalogued prices from its price API; returns what changed or why it skipped."""
    provider = provider.lower()
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; valid: {', '.join(PROVIDERS)}")
    known = load_offers(store, provider)
    source = connector(provider, **connector_options)
    reason = source.unavailable()
    if reason:
        return {"provider": provider, "skipped": reason}
    result = source.fetch(known, today=today or date.today())
    upsert_offers(store, result.offers)
    return {"provider": provider, "updated": len(result.offers), "not_found": result.not_found,
            "as_of": (today or date.today()).isoformat(), "source": source.source_name}
