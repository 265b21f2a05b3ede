"""The cost DAGs' structure, CloudCredentialsHook (Connection -> environment) and CloudCostOperator (skip without
credentials)."""

from __future__ import annotations

import json
import os
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import DAGS, REPO

from operators.costs import CloudCostOperator, configured_sources
from operators.hooks.cloud import CloudCredentialsHook, connection_env

MLEDGE = os.environ.get("MLEDGE_BIN") or str(REPO / ".venvs" / "workload" / "bin" / "mledge")
SOURCES = tomllib.loads((REPO / "costs" / "data" / "sources.toml").read_text())["source"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not {k: v for k, v in bag.import_errors.items() if "billing" in k or "price_catalog" in k}
    return bag


def test_billing_ingestion_maps_one_task_per_configured_source(dagbag):
    dag = dagbag.dags["billing_ingestion"]
    assert dag.task_ids == ["ingest_source"] and dag.schedule == "@daily" and dag.catchup is False
    task = dag.get_task("ingest_source")
    mapped = task.expand_input.value["source"]
    assert [s["name"] for s in mapped] == [s["name"] for s in SOURCES]
    by_name = {s["name"]: s for s in mapped}
    assert by_name["aws-cost-explorer"]["connection"] == "aws_default"
    assert by_name["gcp-billing-export"]["connection"] == "google_cloud_default"
    assert by_name["azure-focus-sample"]["connection"] is None
    assert task.partial_kwargs["retries"] >= 3
    assert task.partial_kwargs["retry_exponential_backoff"] > 1
    assert task.partial_kwargs["max_retry_delay"] == timedelta(minutes=30)
    assert dag.params["trailing_days"] == 7


def test_sources_file_can_be_replaced(tmp_path, monkeypatch):
    path = tmp_path / "sources.toml"
    path.write_text('[[source]]\nname = "customer-a-aws"\nkind = "aws_cost_explorer"\nconnection = "aws_customer_a"\n'
                    '[[source]]\nname = "customer-b-azure"\nkind = "azure_cost_management"\n')
    monkeypatch.setenv("MLEDGE_COST_SOURCES", str(path))
    assert configured_sources() == [
        {"name": "customer-a-aws", "kind": "aws_cost_explorer", "connection": "aws_customer_a"},
        {"name": "customer-b-azure", "kind": "azure_cost_management", "connection": "azure_default"}]


def test_price_catalog_refresh_is_weekly_after_a_seed(dagbag):
    dag = dagbag.dags["price_catalog_refresh"]
    assert dag.schedule == "@weekly" and dag.catchup is False
    for provider in ("aws", "azure", "gcp"):
        task = dag.get_task(f"refresh_{provider}")
        assert task.upstream_task_ids == {"seed_catalog"}
        assert task.arguments == ["costs", "catalog", "refresh", "--provider", provider]
    assert dag.get_task("refresh_aws").conn_id == "aws_default"


def test_ingest_arguments_are_templated():
    operator = CloudCostOperator(task_id="t", source=SOURCES[0], trailing_days="{{ params.trailing_days }}")
    operator.render_template_fields({"params": {"trailing_days": 3}})
    assert operator.arguments == ["costs", "ingest", "--source", SOURCES[0]["name"], "--trailing-days", "3"]


class Conn:
    def __init__(self, conn_type, login=None, password=None, extra=None):
        self.conn_type, self.login, self.password, self.extra_dejson = conn_type, login, password, extra or {}


def test_connection_env_per_cloud(tmp_path):
    aws = connection_env(Conn("aws", "AKIAEXAMPLE", "secret", {"aws_session_token": "tok", "region_name": "eu-west-1"}),
                         "aws", tmp_path)
    assert aws == {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_SESSION_TOKEN": "tok",
                   "AWS_DEFAULT_REGION": "eu-west-1"}
    azure = connection_env(Conn("azure", "client", "secret", {"tenantId": "tenant", "subscriptionId": "sub"}),
                           "azure", tmp_path)
    assert azure == {"AZURE_CLIENT_ID": "client", "AZURE_CLIENT_SECRET": "secret", "AZURE_TENANT_ID": "tenant",
                     "AZURE_SUBSCRIPTION_ID": "sub"}
    # pragma: allowlist nextline secret (fake test value)
    key = {"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----"}
    gcp = connection_env(Conn("google_cloud_platform", extra={"keyfile_dict": json.dumps(key), "project": "p"}),
                         "gcp", tmp_path)
    path = Path(gcp["GOOGLE_APPLICATION_CREDENTIALS"])
    assert path.parent == tmp_path and json.loads(path.read_text()) == key
    assert path.stat().st_mode & 0o077 == 0  # readable by the task's user only
    assert gcp["GOOGLE_CLOUD_PROJECT"] == "p"
    legacy = connection_env(Conn("google_cloud_platform", extra={"extra__google_cloud_platform__key_path": "/k.json"}),
                            "gcp", tmp_path)
    assert legacy == {"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"}


def test_hook_writes_a_private_key_file_from_the_connection_and_removes_it(monkeypatch, capsys):
    key = {"type": "service_account", "project_id": "p"}
    monkeypatch.setenv("AIRFLOW_CONN_GCP_CUSTOMER_C", json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": key, "project": "p"}}))
    with CloudCredentialsHook("gcp_customer_c", family="gcp_bigquery") as hook:
        env = hook.get_env("customer-c")
        path = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
        assert json.loads(path.read_text()) == key and path.stat().st_mode & 0o077 == 0
        assert env["GOOGLE_CLOUD_PROJECT"] == "p"
    assert not path.exists() and not path.parent.exists()  # the key lives only as long as the command
    logged = "".join(capsys.readouterr())
    assert "passed to customer-c as GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_CLOUD_PROJECT" in logged


def test_hook_without_a_usable_connection_gives_no_environment(monkeypatch, capsys):
    monkeypatch.delenv("AIRFLOW_CONN_AWS_NOWHERE", raising=False)
    assert CloudCredentialsHook("aws_nowhere", family="aws").get_env("aws-x") is None
    # pragma: allowlist nextline secret (fake test value)
    monkeypatch.setenv("AIRFLOW_CONN_HTTP_THING", json.dumps({"conn_type": "http", "login": "u", "password": "p"}))
    assert CloudCredentialsHook("http_thing").get_env("thing") is None
    # A Connection whose type says nothing about a cloud serves the family the source's kind names.
    assert CloudCredentialsHook("http_thing", family="azure_cost_management").get_env("thing") == {
        "AZURE_CLIENT_ID": "u", "AZURE_CLIENT_SECRET": "p"}
    logged = "".join(capsys.readouterr())
    assert "Connection 'aws_nowhere' is not defined: aws-x runs without Airflow credentials" in logged
    assert "Connection 'http_thing' has type 'http', which thing cannot use" in logged


def test_task_env_reads_the_connection_and_logs_no_secret(monkeypatch, capsys):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_CUSTOMER_A", json.dumps(
        # pragma: allowlist nextline secret (fake test value)
        {"conn_type": "aws", "login": "AKIACUSTOMERA", "password": "very-secret-value"}))
    operator = CloudCostOperator(task_id="t", source={"name": "customer-a", "kind": "aws_cost_explorer",
                                                      "connection": "aws_customer_a"})
    env = operator.task_env({})
    assert env == {"AWS_ACCESS_KEY_ID": "AKIACUSTOMERA", "AWS_SECRET_ACCESS_KEY": "very-secret-value"}
    logged = "".join(capsys.readouterr())  # Airflow's task logger writes to the console here
    assert "very-secret-value" not in logged and "AKIACUSTOMERA" not in logged
    assert "passed to customer-a as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in logged


def test_without_credentials_the_task_is_skipped_with_the_reason(tmp_path, monkeypatch, capsys):
    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.setenv("MLEDGE_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AIRFLOW_CONN_AWS_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    operator = CloudCostOperator(task_id="ingest", source=SOURCES[3], executable=MLEDGE)
    assert SOURCES[3]["name"] == "aws-cost-explorer"
    with pytest.raises(AirflowSkipException, match="no AWS credentials"):
        operator.execute(context={})
    logged = "".join(capsys.readouterr())
    assert "Connection 'aws_default' is not defined" in logged and "Skipped aws-cost-explorer" in logged


def test_a_file_source_ingests_through_the_real_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MLEDGE_HOME", str(tmp_path))
    monkeypatch.delenv("MLEDGE_COST_DB_URL", raising=False)
    operator = CloudCostOperator(task_id="ingest", source=SOURCES[0], trailing_days=2, executable=MLEDGE)
    result = operator.execute(context={})
    assert result["source"] == "aws-focus-sample" and (result["from"], result["to"]) == ("2026-11-19", "2026-11-21")
    assert result["rows"] > 0 and (tmp_path / "platform" / "costs.db").exists()
