"""price_catalog_refresh: weekly, each provider's on-demand prices from its own price API into the catalogue.

seed_catalog -> refresh_aws, refresh_azure, refresh_gcp

``mledge costs catalog seed`` makes sure the catalogue exists (it never overwrites a refreshed price), then
``mledge costs catalog refresh --provider P`` per provider: the AWS Price List API (Connection ``aws_default``),
the Azure Retail Prices API (public), the GCP Cloud Billing Catalog API (API key in ``google_cloud_default``'s
extra ``api_key``). A provider without credentials ends as skipped. This file only wires.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from mledge.contracts import PRICES_DAG_ID
from operators.costs import CloudCostOperator
from operators.mledge import MledgeOperator

with DAG(
    dag_id=PRICES_DAG_ID,
    description="Weekly refresh of the price catalogue from the AWS, Azure and GCP price APIs",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "retry_exponential_backoff": 2.0,
                  "max_retry_delay": timedelta(minutes=60)},
    tags=["mledge", "costs"],
    doc_md=__doc__,
) as dag:
    seed = MledgeOperator(task_id="seed_catalog", arguments=["costs", "catalog", "seed"])
    for provider in ("aws", "azure", "gcp"):
        seed >> CloudCostOperator(
            task_id=f"refresh_{provider}",
            kind=provider,
            arguments=["costs", "catalog", "refresh", "--provider", provider],
        )
