"""What ``make demo`` shows of the cost layer: the last days of the shipped sample exports, the project's cost by
provider, and the cheapest offer per provider for a site's training machine.

"The last N days" of the samples is anchored to their newest ChargePeriodStart, not to today: sample exports
(like real ones, delivered a day or more late) end on a fixed date, and a window ending today would miss them.
All configured ``focus_files`` sources share one window, ending the day after the newest day found in any of them.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

from costs.catalog import load_offers
from costs.config import CostConfig, build_source
from costs.ingest import ingest
from costs.recommend import recommend
from costs.report import cost_report, projects_by_provider
from costs.store import CostStore
from costs.training import load_sites

log = logging.getLogger(__name__)


def sample_window(config: CostConfig, days: int) -> tuple[date, date]:
    """[newest day - days + 1, newest day + 1) over the configured file sources."""
    newest = [build_source(s, config.project_tag_key).latest_day() for s in config.sources if s.kind == "focus_files"]
    newest = [d for d in newest if d]
    if not newest:
        raise LookupError(f"{config.path}: no focus_files source has readable data")
    end = max(newest) + timedelta(days=1)
    return end - timedelta(days=days), end


def demo_summary(store: CostStore, config: CostConfig, *, project: str = "axis_failures", days: int = 7,
                 site: str = "plant_a") -> dict:
    start, end = sample_window(config, days)
    ingested = []
    for source_config in config.sources:
        if source_config.kind != "focus_files":
            continue
        source = build_source(source_config, config.project_tag_key)
        reason = source.unavailable()
        if reason:
            ingested.append({"source": source.name, "skipped": reason})
            continue
        result = ingest(source, store, start, end, tag_rule=config.tag_rule(source_config))
        ingested.append({"source": source.name, "rows": result.rows})
    report = cost_report(store, project, start, end)
    offers = load_offers(store)
    declared = load_sites()[site]
    recommendation = recommend(offers, declared.template(offers))
    price, _ = declared.price(offers)
    summary = {
        "window": {"from": start.isoformat(), "to": end.isoformat(), "anchor": "newest ChargePeriodStart in the "
                   "sample exports"},
        "ingested": ingested,
        "project": project,
        "metric": report["metric"],
        "currency": report["currency"],
        "total": report["total"],
        "by_provider": report["by_provider"],
        "projects": report["projects"],
        # every project (null: untagged) by provider, in the report's currency
        "projects_by_provider": [{"project": project, "by_provider": costs} for project, costs in
                                 projects_by_provider(store, start, end, currency=report["currency"] or "USD").items()],
        "recommendation": {
            "site": site,
            "declared": {"provider": declared.provider, "region": declared.region,
                         "instance_type": declared.instance_type, "usd_per_hour": format(price.normalize(), "f")},
            **recommendation,
        },
    }
    log.info("%s, %s to %s: %s %s (%s)", project, start, end - timedelta(days=1), report["total"],
             report["currency"], ", ".join(f"{p} {c}" for p, c in report["by_provider"].items()))
    if recommendation["offers"]:
        best = recommendation["offers"][0]
        log.info("cheapest for %s's template: %s %s in %s at %s USD/h", site, best["provider"],
                 best["instance_type"], best["region"], best["usd_per_hour"])
    return summary
