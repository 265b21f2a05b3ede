"""Cheapest matching offer per provider for a compute template (vCPUs, memory, GPUs of one class, regions, hours).

Normalised to Linux, on-demand, shared tenancy, USD per hour, compute only. Per provider (and the template's
regions, if any) an offer matches when vcpu >= asked, memory >= asked, gpu_count >= asked and, when GPUs are
asked, the GPU model is the asked class exactly (T4, L4, A10G, ...; classes are never mixed). Among the matches
the cheapest wins (ties: the smaller overshoot). Providers are ranked by that price. Each offer shows its
overshoot and its price's date and source.

GCP sells GPUs apart from hosts: an n1 host takes 1, 2 or 4 T4s; a g2 host always carries its L4s (one for the
sizes up to g2-standard-32). A GCP machine is priced host + N × accelerator, and named ``host + N x MODEL``.

No match gives a message naming, per provider, the first constraint no offer could meet (region, GPU class,
GPU count, vCPUs, memory), with what the catalogue does have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from costs.catalog import PROVIDERS, Offer

# GCP families that take attachable GPUs: model -> allowed counts.
GCP_ATTACHABLE = {"n1": {"T4": (1, 2, 4)}}
# GCP g2: the L4 count is part of the machine type.
GCP_G2_L4 = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
             "g2-standard-32": 1, "g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Template:
    vcpus: int
    memory_gib: float
    gpus: int = 0
    gpu_class: str | None = None
    regions: tuple[str, ...] = ()
    hours: Decimal | None = None

    def __post_init__(self) -> None:
        if self.vcpus < 1:
            raise ValueError(f"vcpus must be at least 1, not {self.vcpus}")
        if self.memory_gib <= 0:
            raise ValueError(f"memory_gib must be positive, not {self.memory_gib}")
        if self.gpus < 0:
            raise ValueError(f"gpus must not be negative, not {self.gpus}")
        if self.gpus and not self.gpu_class:
            raise ValueError(f"{self.gpus} GPU(s) asked without a GPU class (e.g. T4, L4, A10G)")
        if self.gpu_class and not self.gpus:
            raise ValueError(f"GPU class {self.gpu_class} given with 0 GPUs: ask for at least one")
        if self.hours is not None and self.hours <= 0:
            raise ValueError(f"hours must be positive, not {self.hours}")

    def as_dict(self) -> dict:
        return {"vcpus": self.vcpus, "memory_gib": _number(self.memory_gib), "gpus": self.gpus,
                "gpu_class": self.gpu_class, "regions": list(self.regions),
                "hours": _amount(self.hours) if self.hours is not None else None}


def machines(offers: Sequence[Offer]) -> list[Offer]:
    """Offers as rentable machines: GCP hosts combined with their GPUs; bare accelerator rows dropped."""
    accelerators = {(o.region, (o.gpu_model or "").upper()): o for o in offers if o.is_accelerator}
    out: list[Offer] = []
    for offer in offers:
        if offer.is_accelerator:
            continue
        if offer.provider != "gcp":
            out.append(offer)
            continue
        family = offer.instance_type.split("-")[0]
        if offer.instance_type in GCP_G2_L4:  # the L4s come with the machine
            l4 = accelerators.get((offer.region, "L4"))
            if l4 is not None:
                out.append(_with_gpus(offer, l4, GCP_G2_L4[offer.instance_type]))
            continue
        out.append(offer)
        for model, counts in GCP_ATTACHABLE.get(family, {}).items():
            accelerator = accelerators.get((offer.region, model))
            if accelerator is not None:
                out.extend(_with_gpus(offer, accelerator, n) for n in counts)
    return out


def _with_gpus(host: Offer, accelerator: Offer, count: int) -> Offer:
    dates = [d for d in (host.as_of, accelerator.as_of) if d]
    source = host.source if host.source == accelerator.source else f"{host.source} + {accelerator.source}"
    return replace(
        host,
        instance_type=f"{host.instance_type} + {count} x {accelerator.gpu_model}",
        gpu_count=count,
        gpu_model=accelerator.gpu_model,
        usd_per_hour=host.usd_per_hour + count * accelerator.usd_per_hour,
        as_of=min(dates) if dates else None,  # the older of the two prices dates the sum
        source=source,
    )


def _number(value: float | int) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def _amount(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _no_match(provider: str, candidates: list[Offer], template: Template) -> tuple[list[Offer], str | None]:
    """Apply the constraints in order; the first that leaves nothing is the reason."""
    name = provider.upper() if provider != "azure" else "Azure"
    if not candidates:
        return [], f"{name}: no offer in the catalogue"
    if template.regions:
        kept = [o for o in candidates if o.region in template.regions]
        if not kept:
            have = ", ".join(sorted({o.region for o in candidates}))
            return [], f"{name}: no offer in region(s) {', '.join(template.regions)} (catalogued: {have})"
        candidates = kept
    if template.gpus:
        kept = [o for o in candidates if (o.gpu_model or "").upper() == template.gpu_class.upper()]
        if not kept:
            have = ", ".join(sorted({o.gpu_model for o in candidates if o.gpu_model})) or "none"
            return [], f"{name}: no offer with GPU class {template.gpu_class} (catalogued GPU classes: {have})"
        candidates = kept
        kept = [o for o in candidates if o.gpu_count >= template.gpus]
        if not kept:
            most = max(o.gpu_count for o in candidates)
            return [], (f"{name}: no offer with at least {template.gpus} {template.gpu_class} GPUs "
                        f"(at most {most})")
        candidates = kept
    kept = [o for o in candidates if o.vcpu >= template.vcpus]
    if not kept:
        most = max(o.vcpu for o in candidates)
        return [], f"{name}: no offer with at least {template.vcpus} vCPUs{_given(template)} (at most {most})"
    candidates = kept
    kept = [o for o in candidates if o.memory_gib >= template.memory_gib]
    if not kept:
        most = _number(max(o.memory_gib for o in candidates))
        return [], (f"{name}: no offer with at least {_number(template.memory_gib)} GiB memory"
                    f"{_given(template, vcpus=True)} (at most {most} GiB)")
    return kept, None


def _given(template: Template, vcpus: bool = False) -> str:
    parts = []
    if template.gpus:
        parts.append(f"{template.gpus} x {template.gpu_class}")
    if vcpus:
        parts.append(f">= {template.vcpus} vCPUs")
    return f" with {' and '.join(parts)}" if parts else ""


def recommend(offers: Sequence[Offer], template: Template) -> dict:
    """The ranked cheapest match per provider, as the JSON ``mledge costs recommend`` prints."""
    rentable = machines(offers)
    best: list[Offer] = []
    reasons: list[str] = []
    for provider in PROVIDERS:
        matches, reason = _no_match(provider, [o for o in rentable if o.provider == provider], template)
        if reason:
            reasons.append(reason)
            continue
        best.append(min(matches, key=lambda o: (o.usd_per_hour, o.vcpu - template.vcpus,
                                                o.memory_gib - template.memory_gib, o.gpu_count, o.instance_type)))
    best.sort(key=lambda o: (o.usd_per_hour, o.provider))
    ranked = []
    for rank, offer in enumerate(best, start=1):
        entry = {
            "rank": rank,
            "provider": offer.provider,
            "region": offer.region,
            "instance_type": offer.instance_type,
            "vcpu": offer.vcpu,
            "memory_gib": _number(offer.memory_gib),
            "gpu_count": offer.gpu_count,
            "gpu_model": offer.gpu_model,
            "usd_per_hour": _amount(offer.usd_per_hour),
        }
        if template.hours is not None:
            entry["total_usd"] = _amount((offer.usd_per_hour * template.hours).quantize(CENT, ROUND_HALF_UP))
        entry["overshoot"] = {
            "vcpu": offer.vcpu - template.vcpus,
            "memory_gib": _number(round(offer.memory_gib - template.memory_gib, 3)),
            "gpu_count": offer.gpu_count - template.gpus,
        }
        entry["as_of"] = offer.as_of.isoformat() if offer.as_of else None
        entry["source"] = offer.source
        ranked.append(entry)
    if not ranked:
        message = "No offer matches the template. " + "; ".join(reasons)
    elif reasons:
        message = "Not every provider has a match. " + "; ".join(reasons)
    else:
        message = None
    return {"template": template.as_dict(), "offers": ranked, "message": message}
