"""GCP connectors with the real clients over recorded HTTP: the billing export query through
google-cloud-bigquery, and the Cloud Billing Catalog API for prices."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal

import pytest
from conftest import RecordedSession, http_response
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from costs.catalog import Offer
from costs.focus import CostDataError
from costs.ingest import ingest
from costs.pricing.gcp_catalog import GcpCatalog
from costs.sources.gcp_bigquery import GcpBillingExportSource

PROJECT = "billing-proj"
TABLE = "billing-proj.billing.gcp_billing_export_v1_01A2B3_C4D5E6_F7A8B9"
JOB = {"kind": "bigquery#job", "id": f"{PROJECT}:EU.job_1",
       "jobReference": {"projectId": PROJECT, "jobId": "job_1", "location": "EU"},
       "status": {"state": "DONE"}, "configuration": {"query": {"query": "SELECT", "useLegacySql": False}}}
FIELDS = [("usage_day", "DATE"), ("billing_account_id", "STRING"), ("project_id", "STRING"), ("service", "STRING"),
          ("sku_id", "STRING"), ("sku_description", "STRING"), ("region", "STRING"), ("project_label", "STRING"),
          ("site_label", "STRING"), ("currency", "STRING"), ("cost_type", "STRING"), ("pricing_unit", "STRING"),
          ("cost", "NUMERIC"), ("list_cost", "NUMERIC"), ("credits", "NUMERIC"), ("quantity", "NUMERIC")]
ROWS = [
    ["2026-11-18", "01A2B3-C4D5E6-F7A8B9", "mledge-plant-b", "Compute Engine", "2A1C-5F3D-9E21",
     "N1 Predefined Instance Core running in Netherlands", "europe-west4", "axis_failures", "plant_b", "USD",
     "regular", "hour", "1.172724040", "1.172724040", "-0.234544808", "33.64"],
    ["2026-11-18", "01A2B3-C4D5E6-F7A8B9", "mledge-plant-b", "Cloud Storage", "E5F0-6A2B-1C77",
     "Standard Storage Netherlands", "europe-west4", None, None, "USD", "regular", "gibibyte month",
     "0.015333333", "0.015333333", "0", "0.666666667"],
    ["2026-11-18", "01A2B3-C4D5E6-F7A8B9", "mledge-plant-b", "Invoice", None, None, None, None, None, "USD",
     "tax", None, "0.310000000", "0.310000000", "0", None],
]


def query_results(rows: list[list]) -> dict:
    return {"kind": "bigquery#getQueryResultsResponse", "jobReference": JOB["jobReference"], "jobComplete": True,
            "totalRows": str(len(rows)), "schema": {"fields": [{"name": n, "type": t, "mode": "NULLABLE"}
                                                               for n, t in FIELDS]},
            "rows": [{"f": [{"v": v} for v in r]} for r in rows]}


def bigquery_session(rows: list[list]) -> RecordedSession:
    return RecordedSession([
        ("POST", rf"/bigquery/v2/projects/{PROJECT}/jobs\b", [http_response(200, JOB)]),
        ("GET", rf"/bigquery/v2/projects/{PROJECT}/queries/job_1", [http_response(200, query_results(rows))]),
        ("GET", rf"/bigquery/v2/projects/{PROJECT}/jobs/job_1", [http_response(200, JOB)]),
    ])


def source_with(session: RecordedSession, table: str = TABLE) -> GcpBillingExportSource:
    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(), _http=session)
    return GcpBillingExportSource("gcp-billing", table=table, tag_key="mledge-project", client=client)


def test_query_is_parameterised_and_credits_are_netted(sqlite_store):
    session = bigquery_session(ROWS)
    source = source_with(session)
    rows = list(source.rows(date(2026, 11, 18), date(2026, 11, 19)))

    insert = json.loads(next(body for method, url, _, body in session.calls if method == "POST"))
    query = insert["configuration"]["query"]
    assert f"FROM `{TABLE}`" in query["query"]
    assert "(SELECT value FROM UNNEST(labels) WHERE key = @tag_key LIMIT 1)" in query["query"]
    assert "CROSS JOIN" not in query["query"]
    params = {p["name"]: p["parameterValue"]["value"] for p in query["queryParameters"]}
    assert params["tag_key"] == "mledge-project"
    assert params["usage_start"].startswith("2026-11-18") and params["usage_end"].startswith("2026-11-19")
    # the partition window is wider than the usage window: late-arriving rows are found
    assert params["partition_start"].startswith("2026-11-17") and params["partition_end"].startswith("2026-11-24")

    assert [(r.charge_category, r.service_name, r.billed_cost) for r in rows] == [
        ("Usage", "Compute Engine", Decimal("1.17272404")),
        ("Credit", "Compute Engine", Decimal("-0.234544808")),
        ("Usage", "Cloud Storage", Decimal("0.015333333")),
        ("Tax", "Invoice", Decimal("0.31")),
    ]
    assert rows[0].tags == {"mledge-project": "axis_failures", "mledge-site": "plant_b"}
    assert rows[0].charge_period_start == datetime(2026, 11, 18) and rows[0].pricing_quantity == Decimal("33.64")
    assert rows[2].tags == {}

    ingest(source, sqlite_store, date(2026, 11, 18), date(2026, 11, 19))
    assert sqlite_store.totals()["BilledCost"] == Decimal("1.17272404") - Decimal("0.234544808") + Decimal(
        "0.015333333") + Decimal("0.31")


def test_an_unknown_cost_type_names_the_field():
    bad = [list(ROWS[0])]
    bad[0][10] = "mystery"
    with pytest.raises(CostDataError) as failure:
        list(source_with(bigquery_session(bad)).rows(date(2026, 11, 18), date(2026, 11, 19)))
    assert failure.value.source == "gcp-billing" and failure.value.field == "cost_type"


def test_a_table_name_that_could_inject_sql_is_refused():
    with pytest.raises(CostDataError, match="not a BigQuery table id"):
        source_with(bigquery_session(ROWS), table="p.d.t` WHERE 1=1 --").query()


def test_unavailable_without_table_or_credentials():
    assert "no billing export table" in GcpBillingExportSource("g", table="", tag_key="k").unavailable()
    reason = GcpBillingExportSource("g", table=TABLE, tag_key="k").unavailable()
    assert reason and "no Google credentials" in reason


def sku(description: str, regions: list[str], units: str, nanos: int, usage: str = "OnDemand",
        group: str = "CPU") -> dict:
    return {"skuId": description[:8], "description": description,
            "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                         "resourceGroup": group, "usageType": usage},
            "serviceRegions": regions,
            "pricingInfo": [{"pricingExpression": {"usageUnit": "h", "tieredRates": [
                {"startUsageAmount": 0, "unitPrice": {"currencyCode": "USD", "units": units, "nanos": nanos}}]}}]}


def test_catalog_pages_and_prices_machines_per_resource():
    page_1 = {"skus": [
        sku("N1 Predefined Instance Core running in Netherlands", ["europe-west4"], "0", 34861000),
        sku("Spot Preemptible N1 Predefined Instance Core running in Netherlands", ["europe-west4"], "0", 7000000,
            usage="Preemptible"),
    ], "nextPageToken": "p2"}
    page_2 = {"skus": [
        sku("N1 Predefined Instance Ram running in Netherlands", ["europe-west4"], "0", 4671000, group="RAM"),
        sku("Nvidia Tesla T4 GPU running in Netherlands", ["europe-west4"], "0", 350000000, group="GPU"),
    ]}
    session = RecordedSession([("GET", r"/v1/services/6F81-5844-456A/skus\?(?!.*pageToken)",
                                [http_response(200, page_1)]),
                               ("GET", r"/v1/services/6F81-5844-456A/skus\?.*pageToken=p2",
                                [http_response(200, page_2)])])
    known = [Offer("gcp", "europe-west4", "n1-standard-4", 4, 15, 0, None, Decimal("0.2"), None, "snapshot"),
             Offer("gcp", "europe-west4", "accelerator:T4", 0, 0, 1, "T4", Decimal("0.3"), None, "snapshot"),
             Offer("gcp", "europe-west4", "e2-standard-2", 2, 8, 0, None, Decimal("0.07"), None, "snapshot")]
    result = GcpCatalog(api_key="test-key", session=session).fetch(known, today=date(2026, 11, 23))
    prices = {o.instance_type: o.usd_per_hour for o in result.offers}
    assert prices == {"n1-standard-4": Decimal("4") * Decimal("0.034861") + Decimal("15") * Decimal("0.004671"),
                      "accelerator:T4": Decimal("0.35")}
    assert result.not_found == ["e2-standard-2 in europe-west4"]
    assert len(session.calls) == 2 and "key=test-key" in session.calls[0][1]


def test_catalog_without_api_key_is_unavailable():
    assert "API key" in GcpCatalog().unavailable()
