"""The price catalogue: on-demand Linux offers (provider, region, instance type, size, USD per hour, date, source).

Seeded from ``costs/data/price_snapshot.csv`` (a copy of public SkyPilot catalogue rows, each naming its file and
commit; their dates are unknown, so ``as_of`` stays empty and the source says where the price came from).
``refresh`` replaces prices from a provider's own price API (``costs.pricing``) and dates them; seeding again
never overwrites a refreshed (dated) price with a snapshot one.

GCP prices GPUs separately: its rows ``accelerator:T4`` / ``accelerator:L4`` give one GPU's hourly price, and
hosts are priced without GPUs (``costs.recommend`` and ``costs.training`` add them up).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from costs.focus import CostDataError, parse_amount
from costs.store import CostStore, price_offers

DATA = Path(__file__).resolve().parent / "data"
SNAPSHOT = DATA / "price_snapshot.csv"
PROVIDERS = ("aws", "gcp", "azure")
SNAPSHOT_COLUMNS = ("provider", "instance_type", "vcpu", "memory_gib", "gpu_count", "gpu_model", "region",
                    "usd_per_hour", "source_file", "source_commit")
ACCELERATOR_PREFIX = "accelerator:"


@dataclass(frozen=True)
class Offer:
    provider: str
    region: str
    instance_type: str
    vcpu: int
    memory_gib: float
    gpu_count: int
    gpu_model: str | None
    usd_per_hour: Decimal
    as_of: date | None
    source: str

    @property
    def is_accelerator(self) -> bool:
        return self.instance_type.startswith(ACCELERATOR_PREFIX)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["usd_per_hour"] = format(self.usd_per_hour.normalize(), "f")
        out["as_of"] = self.as_of.isoformat() if self.as_of else None
        return out


def read_snapshot(path: Path = SNAPSHOT) -> list[Offer]:
    """The snapshot CSV as offers; a bad row is an error naming the file, line and column."""
    source = path.name
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SNAPSHOT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CostDataError(source, missing[0], "column missing", location=str(path))
        offers = []
        for line, row in enumerate(reader, start=2):
            where = f"{path.name} line {line}"
            provider = row["provider"].strip().lower()
            if provider not in PROVIDERS:
                raise CostDataError(source, "provider", f"{row['provider']!r} is not one of {PROVIDERS}",
                                    location=where)
            try:
                vcpu, gpus = int(row["vcpu"]), int(row["gpu_count"])
                memory = float(row["memory_gib"])
            except ValueError as exc:
                raise CostDataError(source, "vcpu/memory_gib/gpu_count", str(exc), location=where) from None
            price = parse_amount(row["usd_per_hour"], source, "usd_per_hour", location=where)
            offers.append(Offer(
                provider=provider, region=row["region"].strip(), instance_type=row["instance_type"].strip(),
                vcpu=vcpu, memory_gib=memory, gpu_count=gpus, gpu_model=row["gpu_model"].strip() or None,
                usd_per_hour=price, as_of=None,
                source=f"snapshot of skypilot-catalog {row['source_file']}@{row['source_commit'][:12]}",
            ))
    return offers


def upsert_offers(store: CostStore, offers: Iterable[Offer], *, keep_dated: bool = False) -> int:
    """Insert or update offers by (provider, region, instance type). ``keep_dated``: leave dated prices alone."""
    values = [asdict(o) for o in offers]
    if not values:
        return 0
    if store.dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    statement = insert(price_offers)
    statement = statement.on_conflict_do_update(
        index_elements=["provider", "region", "instance_type"],
        set_={c: statement.excluded[c] for c in values[0] if c not in ("provider", "region", "instance_type")},
        where=price_offers.c.as_of.is_(None) if keep_dated else None,
    )
    with store.engine.begin() as conn:
        conn.execute(statement, values)
    return len(values)


def seed(store: CostStore, path: Path = SNAPSHOT) -> dict:
    """Load the snapshot into the store (refreshed, dated prices are kept)."""
    offers = read_snapshot(path)
    upsert_offers(store, offers, keep_dated=True)
    return {"seeded": len(offers), "source": str(path), "providers": sorted({o.provider for o in offers})}


def load_offers(store: CostStore, provider: str | None = None, regions: Sequence[str] = ()) -> list[Offer]:
    """Offers from the store, seeding it from the snapshot first if it is empty."""
    query = select(price_offers).order_by(price_offers.c.provider, price_offers.c.region,
                                          price_offers.c.instance_type)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    if not rows:
        seed(store)
        with store.engine.connect() as conn:
            rows = conn.execute(query).all()
    offers = [Offer(**{k: v for k, v in r._mapping.items() if k != "id"}) for r in rows]
    return [o for o in offers
            if (provider is None or o.provider == provider) and (not regions or o.region in regions)]


def find_offer(offers: Sequence[Offer], provider: str, region: str, instance_type: str) -> Offer | None:
    for offer in offers:
        if (offer.provider, offer.region, offer.instance_type) == (provider, region, instance_type):
            return offer
    return None
