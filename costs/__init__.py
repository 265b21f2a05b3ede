"""MLEDGE's cost layer: cloud billing into a FOCUS-aligned store, cost per federated project, price comparison.

No Airflow imports: the library runs in the workload environment, on its own or behind ``mledge costs ...``.

- ``focus``: the FOCUS column set, ``CostRow`` and its validation (``CostDataError`` names source and field).
- ``sources``: where rows come from (AWS Cost Explorer, GCP billing export in BigQuery, Azure Cost Management,
  FOCUS export files), each behind one small interface.
- ``store`` and ``ingest``: SQLAlchemy 2 / Alembic store, idempotent day-by-day ingestion.
- ``report``, ``training``: totals per project, provider, service and day, and federated training priced as cost.
- ``catalog``, ``pricing``, ``recommend``: price offers and the cheapest matching instance per provider.
"""
