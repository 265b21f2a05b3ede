"""The Airflow Assets that connect MLEDGE's DAGs: one definition, imported by producers and consumers alike."""

from __future__ import annotations

from airflow.sdk import Asset

from mledge.contracts import DRIFT_ASSET_GROUP, DRIFT_ASSET_NAME, DRIFT_ASSET_URI

# Confirmed (or approved) drift at any site of the federation: federated_training is scheduled on it.
DRIFT = Asset(uri=DRIFT_ASSET_URI, name=DRIFT_ASSET_NAME, group=DRIFT_ASSET_GROUP)
