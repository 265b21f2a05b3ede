"""Drift detection for MLEDGE, run where the data live: data drift (Evidently), concept drift (the production
model's errors, p-value by simulation), false-alarm control, and the alert and bookkeeping tables.

No Airflow imports, and nothing heavy at import time: ``drift.alerts`` is imported by the Airflow UI plugin too.
"""
