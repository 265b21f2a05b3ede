"""billing_ingestion: every configured cost source, one mapped task each, ingested daily into the cost store.

ingest_source[aws-focus-sample, azure-focus-sample, ..., azure-cost-management]

The sources come from ``costs/data/sources.toml`` (or ``MLEDGE_COST_SOURCES``), read at parse time with tomllib.
Each task runs ``mledge costs ingest --source NAME --trailing-days N``: recent cloud costs are estimates, so the
last N days are re-ingested (idempotently) on every run. Credentials come from the source's Airflow Connection
(``aws_default``, ``google_cloud_default``, ``azure_default`` or a per-customer one); a source without them ends
as *skipped* with the reason in its log. Throttling and transient failures are retried with exponential backoff.
This file only wires.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from mledge.contracts import BILLING_DAG_ID
from operators.costs import CloudCostOperator, configured_sources

SOURCES = configured_sources()

with DAG(
    dag_id=BILLING_DAG_ID,
    description="Daily cloud billing ingestion into the FOCUS-aligned cost store, one task per source",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 4,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,  # 2, 4, 8, 16 minutes: Cost Explorer and Azure throttle per minute
        "max_retry_delay": timedelta(minutes=30),
    },
    params={
        "trailing_days": Param(7, type="integer", minimum=1, maximum=90,
                               description="Days re-ingested on every run (recent costs are estimates)"),
    },
    tags=["mledge", "costs"],
    doc_md=__doc__,
) as dag:
    CloudCostOperator.partial(
        task_id="ingest_source",
        trailing_days="{{ params.trailing_days }}",
        map_index_template="{{ task.source['name'] }}",
    ).expand(source=SOURCES)
