"""A Flower run's compute, priced per site, recorded as cost rows: a project's cost includes its training.

Each site declares where it trains in ``costs/data/sites.toml`` (provider, region, instance type, and for GCP
the attached accelerators). ``record_training`` prices each site's compute seconds at that instance type's
catalogue price and writes one FOCUS row per site under ``x_source = "mledge-training"``:
ChargeCategory Usage, PricingQuantity in hours, tags naming the project, site and Flower run, ``x_estimated``
true (it is our estimate, not the provider's bill). Recording the same run again replaces its rows.

If a site's machines are also billed through an ingested cloud account, the same compute appears twice (once
billed, once estimated): filter on ``x_source`` to separate them (``costs report`` lists costs per source).
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from costs.catalog import ACCELERATOR_PREFIX, Offer, find_offer, load_offers
from costs.config import ConfigError
from costs.focus import AMOUNT_PLACES, CostRow, validate
from costs.store import CostStore

DATA = Path(__file__).resolve().parent / "data"
SITES_FILE = DATA / "sites.toml"
TRAINING_SOURCE = "mledge-training"
RESOURCE_PREFIX = "mledge:flower-run/"  # + "<run>/site/<site>": a training row's ResourceId
PROVIDER_NAMES = {"aws": "AWS", "gcp": "Google Cloud", "azure": "Microsoft"}
COMPUTE_SERVICES = {"aws": "Amazon Elastic Compute Cloud", "gcp": "Compute Engine", "azure": "Virtual Machines"}
_PLACES = Decimal(1).scaleb(-AMOUNT_PLACES)


@dataclass(frozen=True)
class SiteDeclaration:
    site: str
    provider: str
    region: str
    instance_type: str
    accelerator: str | None = None
    accelerator_count: int = 0

    def price(self, offers: list[Offer]) -> tuple[Decimal, list[Offer]]:
        """USD per hour of this site's machine (host plus accelerators) and the offers it was priced from."""
        host = find_offer(offers, self.provider, self.region, self.instance_type)
        if host is None:
            raise LookupError(f"site {self.site}: no catalogue price for {self.provider} {self.instance_type} in "
                              f"{self.region} (run `mledge costs catalog seed` or declare a catalogued type)")
        used = [host]
        price = host.usd_per_hour
        if self.accelerator and self.accelerator_count:
            accelerator = find_offer(offers, self.provider, self.region, f"{ACCELERATOR_PREFIX}{self.accelerator}")
            if accelerator is None:
                raise LookupError(f"site {self.site}: no catalogue price for accelerator {self.accelerator} in "
                                  f"{self.region}")
            used.append(accelerator)
            price += self.accelerator_count * accelerator.usd_per_hour
        return price, used

    def template(self, offers: list[Offer]):
        """This site's machine as a recommendation template (its vCPUs, memory and GPUs)."""
        from costs.recommend import Template

        _, (host, *accelerators) = self.price(offers)
        gpus = host.gpu_count + (self.accelerator_count if accelerators else 0)
        model = accelerators[0].gpu_model if accelerators else host.gpu_model
        return Template(vcpus=host.vcpu, memory_gib=host.memory_gib, gpus=gpus, gpu_class=model if gpus else None)


def load_sites(path: Path = SITES_FILE) -> dict[str, SiteDeclaration]:
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read site declarations: {exc}") from None
    sites = {}
    for site, entry in document.get("sites", {}).items():
        for key in ("provider", "region", "instance_type"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{path}: site {site}: '{key}' is missing")
        if entry["provider"] not in PROVIDER_NAMES:
            raise ConfigError(f"{path}: site {site}: provider {entry['provider']!r} is not one of "
                              f"{', '.join(PROVIDER_NAMES)}")
        count = entry.get("accelerator_count", 1 if entry.get("accelerator") else 0)
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f"{path}: site {site}: accelerator_count must be a non-negative integer")
        sites[site] = SiteDeclaration(site, entry["provider"], entry["region"], entry["instance_type"],
                                      entry.get("accelerator"), count)
    return sites


def parse_seconds(text: str | Mapping[str, Any]) -> dict[str, Decimal]:
    """``{"plant_a": 120.5, ...}`` (JSON text or mapping) as exact, non-negative Decimal seconds per site."""
    if isinstance(text, str):
        try:
            raw = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--seconds-json is not JSON: {exc}") from None
    else:
        raw = dict(text)
    if not isinstance(raw, dict) or not raw:
        raise ValueError("--seconds-json must be a non-empty object of site -> seconds")
    seconds = {}
    for site, value in raw.items():
        try:
            amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
        except InvalidOperation:
            raise ValueError(f"site {site}: seconds {value!r} is not a number") from None
        if isinstance(value, bool) or not amount.is_finite() or amount < 0 or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"site {site}: seconds {value!r} is not a non-negative number")
        seconds[site] = amount
    return seconds


def record_training(store: CostStore, flower_run_id: str, seconds: Mapping[str, Decimal], *,
                    project: str = "axis_failures", tag_key: str = "mledge-project", at: datetime | None = None,
                    sites: Mapping[str, SiteDeclaration] | None = None) -> dict:
    """Price each site's compute seconds and store one row per site (replacing this run's earlier rows)."""
    if not flower_run_id:
        raise ValueError("a Flower run id is needed")
    sites = sites if sites is not None else load_sites()
    unknown = sorted(set(seconds) - set(sites))
    if unknown:
        raise ValueError(f"site(s) {', '.join(unknown)} not declared in {SITES_FILE} "
                         f"(declared: {', '.join(sorted(sites))})")
    offers = load_offers(store)
    at = (at or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    day = datetime(at.year, at.month, at.day)
    rows, details = [], []
    prefix = f"{RESOURCE_PREFIX}{flower_run_id}/site/"
    for site, secs in sorted(seconds.items()):
        declared = sites[site]
        price, used = declared.price(offers)
        hours = (secs / 3600).quantize(_PLACES, ROUND_HALF_UP)
        cost = (price * secs / 3600).quantize(_PLACES, ROUND_HALF_UP)
        machine = declared.instance_type + (f" + {declared.accelerator_count} x {declared.accelerator}"
                                            if declared.accelerator and declared.accelerator_count else "")
        resource_id = f"{prefix}{site}"
        dates = [o.as_of.isoformat() for o in used if o.as_of]
        rows.append(validate(CostRow(
            billed_cost=cost, effective_cost=cost, list_cost=cost, contracted_cost=cost,
            billing_currency="USD", billing_account_id="mledge-training-estimate",
            billing_account_name="MLEDGE training estimates",
            charge_period_start=day, charge_period_end=day + timedelta(days=1),
            charge_category="Usage",
            charge_description=f"Flower run {flower_run_id}: {secs} s of {machine} at {site}, priced at "
                               f"{format(price.normalize(), 'f')} USD/h ({used[0].source}"
                               f"{', as of ' + min(dates) if dates else ''})",
            pricing_quantity=hours, pricing_unit="Hours",
            provider_name=PROVIDER_NAMES[declared.provider], publisher_name=PROVIDER_NAMES[declared.provider],
            invoice_issuer_name="MLEDGE (estimate)",
            service_name=COMPUTE_SERVICES[declared.provider], service_category="Compute",
            region_id=declared.region, resource_id=resource_id, sku_id=machine,
            tags={tag_key: project, "mledge-site": site, "mledge-flower-run": str(flower_run_id)},
            x_project=project, x_site=site, x_estimated=True,
        ), TRAINING_SOURCE))
        details.append({"site": site, "provider": declared.provider, "region": declared.region,
                        "instance_type": machine, "seconds": format(secs.normalize(), "f"),
                        "usd_per_hour": format(price.normalize(), "f"), "cost": format(cost.normalize(), "f")})
    store.replace_resources(TRAINING_SOURCE, prefix, rows)  # the whole run, whichever sites it had before
    total = sum((r.billed_cost for r in rows), Decimal(0))
    return {"flower_run_id": flower_run_id, "project": project, "day": day.date().isoformat(),
            "currency": "USD", "rows": details, "total": format(total.normalize(), "f")}
