"""The Airflow Assets that connect MLEDGE's DAGs: one definition, imported by producers and consumers alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset

from mledge.contracts import DRIFT_ASSET_GROUP, DRIFT_ASSET_NAME, DRIFT_ASSET_URI, EVENT_ALERT_IDS

# Confirmed (or approved) drift at any site of the federation: federated_training is scheduled on it.
DRIFT = Asset(uri=DRIFT_ASSET_URI, name=DRIFT_ASSET_NAME, group=DRIFT_ASSET_GROUP)


def drift_alert_ids(triggering_asset_events: Mapping[Any, Iterable[Any]] | None) -> list[int]:
    """The drift alert ids that the drift Asset events which started a run carry (``extra["alert_ids"]``), sorted
    and once each: the alerts that run retrains for. A run started by hand or on a clock has none."""
    ids: set[int] = set()
    for asset, events in (triggering_asset_events or {}).items():
        if getattr(asset, "uri", asset) != DRIFT.uri:
            continue
        for event in events:
            extra = getattr(event, "extra", None) or {}
            ids.update(int(i) for i in extra.get(EVENT_ALERT_IDS) or [])
    return sorted(ids)
