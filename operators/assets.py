"""The Airflow Assets that connect MLEDGE's DAGs: one definition, imported by producers and consumers alike."""

from __future__ import annotations

from airflow.sdk import Asset

# Confirmed (or approved) drift at any site of the axis_failures federation: federated_training is scheduled on it.
DRIFT_URI = "mledge://axis_failures/drift"
DRIFT = Asset(uri=DRIFT_URI, name="axis_failures_drift", group="mledge")
