"""AWS connectors with the real boto3: Cost Explorer under moto (two pages, a throttled call), Price List under
botocore's Stubber (moto has no pricing service)."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal

import boto3
import pytest
import requests
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from moto import mock_aws
from moto.core.botocore_stubber import MockRawResponse

from costs.catalog import Offer
from costs.focus import CostDataError
from costs.ingest import ingest
from costs.pricing.aws_price_list import AwsPriceList
from costs.sources.aws_cost_explorer import AwsCostExplorerSource

MOTO_CE_RESULTS = "http://motoapi.amazonaws.com/moto-api/static/ce/cost-and-usage-results"
DAY = {"Start": "2026-11-18", "End": "2026-11-19"}


def group(tag: str, service: str, unblended: str, amortized: str) -> dict:
    return {"Keys": [f"mledge-project${tag}", service],
            "Metrics": {"UnblendedCost": {"Amount": unblended, "Unit": "USD"},
                        "AmortizedCost": {"Amount": amortized, "Unit": "USD"}}}


PAGE_1 = {"ResultsByTime": [{"TimePeriod": DAY, "Total": {}, "Estimated": True, "Groups": [
    group("axis_failures", "Amazon Elastic Compute Cloud - Compute", "3.9480000000", "2.8425600000"),
    group("axis_failures", "Amazon Simple Storage Service", "0.0285833333", "0.0285833333"),
]}], "DimensionValueAttributes": [], "NextPageToken": "page-2"}
PAGE_2 = {"ResultsByTime": [{"TimePeriod": DAY, "Total": {}, "Estimated": True, "Groups": [
    group("", "AmazonCloudWatch", "0.4000000000", "0.4000000000"),
    group("vision_qc", "Tax", "1.1100000000", "1.1100000000"),
]}], "DimensionValueAttributes": []}


@pytest.fixture
def ce():
    with mock_aws():
        yield boto3.client("ce", region_name="us-east-1")


def queue_results(*pages: dict) -> None:
    response = requests.post(MOTO_CE_RESULTS, json={"results": list(pages)}, timeout=5)
    assert response.status_code == 201


def test_two_pages_become_rows_with_decimal_amounts(ce, sqlite_store):
    queue_results(PAGE_1, PAGE_2)
    calls = []
    ce.meta.events.register("before-parameter-build.ce.GetCostAndUsage", lambda params, **_: calls.append(params))
    source = AwsCostExplorerSource("aws-ce", tag_key="mledge-project", client=ce)
    rows = list(source.rows(date(2026, 11, 18), date(2026, 11, 19)))

    assert [c.get("NextPageToken") for c in calls] == [None, "page-2"]
    assert calls[0]["GroupBy"] == [{"Type": "TAG", "Key": "mledge-project"}, {"Type": "DIMENSION", "Key": "SERVICE"}]
    assert calls[0]["Granularity"] == "DAILY" and calls[0]["TimePeriod"] == DAY
    assert [(r.service_name, r.billed_cost, r.effective_cost) for r in rows] == [
        ("Amazon Elastic Compute Cloud - Compute", Decimal("3.948"), Decimal("2.84256")),
        ("Amazon Simple Storage Service", Decimal("0.0285833333"), Decimal("0.0285833333")),
        ("AmazonCloudWatch", Decimal("0.4"), Decimal("0.4")),
        ("Tax", Decimal("1.11"), Decimal("1.11")),
    ]
    assert [r.tags for r in rows] == [{"mledge-project": "axis_failures"}] * 2 + [{}, {"mledge-project": "vision_qc"}]
    assert [r.charge_category for r in rows] == ["Usage", "Usage", "Usage", "Tax"]
    assert all(r.x_estimated and r.charge_period_start == datetime(2026, 11, 18) for r in rows)

    ingest(source, sqlite_store, date(2026, 11, 18), date(2026, 11, 19))
    assert sqlite_store.totals()["BilledCost"] == Decimal("5.4865833333")


def test_a_throttled_call_is_retried(ce):
    """Cost Explorer answers LimitExceededException (HTTP 400) once; botocore's standard retry tries again."""
    queue_results(PAGE_2)
    attempts = []

    def throttle_first(request, **_):
        attempts.append(request.url)
        if len(attempts) == 1:
            body = json.dumps({"__type": "LimitExceededException", "Message": "Rate exceeded"}).encode()
            return AWSResponse(request.url, 400, {"x-amzn-RequestId": "throttled-1",
                                                  "Content-Type": "application/x-amz-json-1.1"},
                               MockRawResponse(body))
        return None

    ce.meta.events.register_first("before-send.ce.GetCostAndUsage", throttle_first)
    rows = list(AwsCostExplorerSource("aws-ce", tag_key="mledge-project", client=ce)
                .rows(date(2026, 11, 18), date(2026, 11, 19)))
    assert len(attempts) == 2
    assert [r.service_name for r in rows] == ["AmazonCloudWatch", "Tax"]


def test_a_non_numeric_amount_names_the_field(ce):
    bad = json.loads(json.dumps(PAGE_2))
    bad["ResultsByTime"][0]["Groups"][0]["Metrics"]["UnblendedCost"]["Amount"] = "n/a"
    queue_results(bad)
    with pytest.raises(CostDataError) as failure:
        list(AwsCostExplorerSource("aws-ce", tag_key="mledge-project", client=ce)
             .rows(date(2026, 11, 18), date(2026, 11, 19)))
    assert failure.value.source == "aws-ce" and failure.value.field == "Metrics.UnblendedCost.Amount"


def test_without_credentials_the_source_is_unavailable():
    reason = AwsCostExplorerSource("aws-ce", tag_key="mledge-project").unavailable()
    assert reason and "no AWS credentials" in reason


def product(instance_type: str, region: str, price: str, vcpu: str = "4", memory: str = "16 GiB",
            gpu: str = "1") -> str:
    sku = f"SKU{abs(hash((instance_type, region))) % 10**8}"
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
            "instanceType": instance_type, "regionCode": region, "vcpu": vcpu, "memory": memory, "gpu": gpu,
            "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {"priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
            "unit": "Hrs", "pricePerUnit": {"USD": price}, "description": f"${price} per On Demand Linux"}}}}},
        "publicationDate": "2026-11-20T00:00:00Z",
    })


def test_price_list_pages_and_parsing():
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in {
        "instanceType": "g4dn.xlarge", "operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA",
        "capacitystatus": "Used"}.items()]
    known = [Offer("aws", region, "g4dn.xlarge", 4, 16, 1, "T4", Decimal("0.5"), None, "snapshot")
             for region in ("eu-central-1", "us-east-1", "eu-north-1")]
    with Stubber(client) as stub:
        stub.add_response("get_products", {"FormatVersion": "aws_v1", "NextToken": "next",
                                           "PriceList": [product("g4dn.xlarge", "eu-central-1", "0.6580000000"),
                                                         product("g4dn.xlarge", "ap-south-1", "0.5790000000")]},
                          expected_params={"ServiceCode": "AmazonEC2", "Filters": filters})
        stub.add_response("get_products", {"FormatVersion": "aws_v1",
                                           "PriceList": [product("g4dn.xlarge", "us-east-1", "0.5260000000")]},
                          expected_params={"ServiceCode": "AmazonEC2", "Filters": filters, "NextToken": "next"})
        result = AwsPriceList(client=client).fetch(known, today=date(2026, 11, 23))
        stub.assert_no_pending_responses()
    assert sorted((o.region, o.usd_per_hour, o.gpu_model, o.memory_gib) for o in result.offers) == [
        ("eu-central-1", Decimal("0.658"), "T4", 16.0), ("us-east-1", Decimal("0.526"), "T4", 16.0)]
    assert all(o.as_of == date(2026, 11, 23) and "Price List" in o.source for o in result.offers)
    assert result.not_found == ["g4dn.xlarge in eu-north-1"]
