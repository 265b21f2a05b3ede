"""Azure connectors with the real SDK over recorded HTTP: Cost Management ``query.usage`` through azure-core's
RequestsTransport (``$skiptoken`` paging, a 429 with Retry-After), and the Retail Prices API."""

from __future__ import annotations

import time
from datetime import date, datetime
from decimal import Decimal

import pytest
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from azure.mgmt.costmanagement import CostManagementClient
from conftest import RecordedSession, http_response

from costs.catalog import Offer
from costs.focus import CostDataError
from costs.pricing.azure_retail import AzureRetailPrices
from costs.sources.azure_cost_management import AzureCostManagementSource

SCOPE = "/subscriptions/6c2e8a1f-3b4d-4f5a-9e8d-7c6b5a4f3e2d"
QUERY = r"/subscriptions/6c2e8a1f-3b4d-4f5a-9e8d-7c6b5a4f3e2d/providers/Microsoft\.CostManagement/query"
COLUMNS = [{"name": "Cost", "type": "Number"}, {"name": "UsageDate", "type": "Number"},
           {"name": "TagKey", "type": "String"}, {"name": "TagValue", "type": "String"},
           {"name": "ServiceName", "type": "String"}, {"name": "Currency", "type": "String"}]


class StaticCredential:
    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)


def page(rows: list[list], next_link: str | None = None) -> dict:
    return {"id": f"{SCOPE}/providers/Microsoft.CostManagement/query/q1", "name": "q1",
            "type": "Microsoft.CostManagement/query",
            "properties": {"nextLink": next_link, "columns": COLUMNS, "rows": rows}}


PAGE_1 = page([[2.4957648000000001, 20261118, "mledge-project", "axis_failures", "virtual machines", "USD"],
               [0.657, 20261118, "mledge-project", "axis_failures", "storage", "USD"]],
              next_link=f"https://management.azure.com{SCOPE}/providers/Microsoft.CostManagement/query?"
                        "api-version=2025-03-01&$skiptoken=AQAAAA%3D%3D-page2")
PAGE_2 = page([[4.4856, 20261118, "", "", "log analytics", "USD"],
               [7.032, 20261118, "mledge-project", "vision_qc", "azure machine learning", "USD"]])


def client_over(session: RecordedSession) -> CostManagementClient:
    return CostManagementClient(StaticCredential(), transport=RequestsTransport(session=session, session_owner=False),
                                retry_total=3)


def test_skiptoken_paging_and_a_429_honoured():
    throttled = http_response(429, {"error": {"code": "429", "message": "Too many requests"}},
                              headers={"Retry-After": "1"})
    session = RecordedSession([
        ("POST", QUERY + r"\?api-version=[^&]+$", [http_response(200, PAGE_1)]),
        ("POST", QUERY + r"\?.*(\$|%24)skiptoken=AQAAAA", [throttled, http_response(200, PAGE_2)]),
    ])
    source = AzureCostManagementSource("azure-cm", scope=SCOPE, tag_key="mledge-project",
                                       client=client_over(session))
    rows = list(source.rows(date(2026, 11, 18), date(2026, 11, 19)))

    assert len(session.calls) == 3  # page 1, the throttled page 2, page 2 again
    assert session.calls[1][1] == session.calls[2][1]
    body = session.calls[0][3]
    body = body.decode() if isinstance(body, bytes) else body
    assert '"TagKey"' in body and '"ServiceName"' in body and '"Daily"' in body
    assert '"2026-11-18T23:59:59' in body  # Azure's "to" is inclusive: the window's last second
    assert [(r.service_name, r.billed_cost, r.tags) for r in rows] == [
        ("virtual machines", Decimal("2.4957648000"), {"mledge-project": "axis_failures"}),
        ("storage", Decimal("0.657"), {"mledge-project": "axis_failures"}),
        ("log analytics", Decimal("4.4856"), {}),
        ("azure machine learning", Decimal("7.032"), {"mledge-project": "vision_qc"}),
    ]
    assert rows[0].charge_period_start == datetime(2026, 11, 18)
    assert all(r.billing_currency == "USD" and r.provider_name == "Microsoft" for r in rows)


def test_the_body_is_read_without_floats():
    """17 significant digits survive: the body is parsed with Decimal, not through the SDK's floats."""
    session = RecordedSession([("POST", QUERY, [http_response(
        200, '{"properties": {"nextLink": null, "columns": [{"name": "PreTaxCost"}, {"name": "UsageDate"}, '
             '{"name": "ServiceName"}, {"name": "Currency"}], "rows": [[0.12345678901234567, 20261118, "x", '
             '"USD"]]}}', headers={"Content-Type": "application/json"})])])
    (row,) = AzureCostManagementSource("azure-cm", scope=SCOPE, tag_key="mledge-project",
                                       client=client_over(session)).rows(date(2026, 11, 18), date(2026, 11, 19))
    assert row.billed_cost == Decimal("0.1234567890")  # kept to 10 places, rounded from the exact text


def test_a_missing_cost_column_names_the_field():
    broken = page([[20261118, "x", "USD"]])
    broken["properties"]["columns"] = [{"name": "UsageDate"}, {"name": "ServiceName"}, {"name": "Currency"}]
    session = RecordedSession([("POST", QUERY, [http_response(200, broken)])])
    with pytest.raises(CostDataError) as failure:
        list(AzureCostManagementSource("azure-cm", scope=SCOPE, tag_key="mledge-project",
                                       client=client_over(session)).rows(date(2026, 11, 18), date(2026, 11, 19)))
    assert failure.value.source == "azure-cm" and "cost" in failure.value.field


def test_unavailable_without_scope_or_credentials(monkeypatch):
    assert "no Cost Management scope" in AzureCostManagementSource("a", scope="", tag_key="k").unavailable()
    assert "no Azure credentials" in AzureCostManagementSource("a", scope=SCOPE, tag_key="k").unavailable()
    monkeypatch.setenv("AZURE_CLIENT_ID", "id")
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "secret")
    assert AzureCostManagementSource("a", scope=SCOPE, tag_key="k").unavailable() is None


def retail_item(sku: str, price: str, product: str = "Virtual Machines NCasT4_v3 Series",
                meter: str = "NC4as T4 v3") -> dict:
    return {"currencyCode": "USD", "retailPrice": float(price), "unitPrice": float(price), "armRegionName": "eastus",
            "armSkuName": sku, "productName": product, "skuName": meter, "meterName": meter,
            "serviceName": "Virtual Machines", "type": "Consumption", "unitOfMeasure": "1 Hour"}


def test_retail_prices_follow_next_page_and_keep_linux_on_demand():
    next_page = "https://prices.azure.com/api/retail/prices?$filter=x&$skip=100"
    page_1 = {"Items": [retail_item("Standard_NC4as_T4_v3", "0.526"),
                        retail_item("Standard_NC4as_T4_v3", "0.7", product="Virtual Machines NCasT4_v3 Series "
                                    "Windows")],
              "NextPageLink": next_page}
    page_2 = {"Items": [retail_item("Standard_NC4as_T4_v3", "0.1578", meter="NC4as T4 v3 Spot"),
                        retail_item("Standard_D8s_v5", "0.384", product="Virtual Machines Dsv5 Series",
                                    meter="D8s v5")], "NextPageLink": None}
    session = RecordedSession([("GET", r"\$skip=100", [http_response(200, page_2)]),
                               ("GET", r"/api/retail/prices\?", [http_response(200, page_1)])])
    known = [Offer("azure", "eastus", "Standard_NC4as_T4_v3", 4, 28, 1, "T4", Decimal("0.5"), None, "snapshot"),
             Offer("azure", "eastus", "Standard_D8s_v5", 8, 32, 0, None, Decimal("0.3"), None, "snapshot"),
             Offer("azure", "eastus", "Standard_D2s_v5", 2, 8, 0, None, Decimal("0.1"), None, "snapshot")]
    result = AzureRetailPrices(session=session).fetch(known, today=date(2026, 11, 23))
    assert {o.instance_type: o.usd_per_hour for o in result.offers} == {
        "Standard_NC4as_T4_v3": Decimal("0.526"), "Standard_D8s_v5": Decimal("0.384")}
    assert result.not_found == ["Standard_D2s_v5 in eastus"]
    first_filter = session.calls[0][2]["$filter"]
    assert "armRegionName eq 'eastus'" in first_filter and "priceType eq 'Consumption'" in first_filter
    assert "armSkuName eq 'Standard_NC4as_T4_v3'" in first_filter
