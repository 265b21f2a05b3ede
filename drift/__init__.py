"""Drift detection, the platform's half: sites measure (mledge/onsite/: Evidently data drift, concept-drift
p-values by simulation) and hand over p-values and statistics; here they are corrected for false alarms, decided,
and recorded as alerts and processed marks in the platform database, where people review them.

No Airflow imports, nothing heavy at import time, and no raw rows: the site package is never imported here.
"""
