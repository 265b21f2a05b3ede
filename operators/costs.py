"""Airflow's side of the cost layer: run ``mledge costs ...`` with credentials taken from an Airflow Connection.

Credentials never go into arguments or logs. ``CloudCostOperator.task_env`` reads the source's Connection
(``aws_default``, ``google_cloud_default``, ``azure_default``, or one per customer named in the sources file) and
hands the command the standard environment variables of that cloud's SDK:

| Connection type          | environment                                                                      |
|--------------------------|----------------------------------------------------------------------------------|
| aws                      | AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, |
|                          | AWS_PROFILE (extras aws_session_token, region_name, profile_name)                |
| google_cloud_platform    | GOOGLE_APPLICATION_CREDENTIALS (extra key_path, or keyfile_dict written to a     |
|                          | private temporary file removed after the task), GOOGLE_CLOUD_PROJECT (project),  |
|                          | GCP_PRICING_API_KEY (api_key)                                                    |
| azure                    | AZURE_CLIENT_ID (login), AZURE_CLIENT_SECRET (password), AZURE_TENANT_ID,        |
|                          | AZURE_SUBSCRIPTION_ID, AZURE_COST_SCOPE (extras tenantId, subscriptionId, scope) |

A missing Connection adds nothing: the command then finds no credentials (unless the worker's own environment
has some), answers ``{"skipped": reason}``, and the task ends as skipped with that reason in its log.

This module imports nothing of the workload (no ``costs``): it runs in the Airflow environment and is read by
the dag-processor. ``configured_sources`` reads the sources file with tomllib only.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSkipException

from operators.mledge import MledgeOperator

REPO = Path(__file__).resolve().parents[1]
SOURCES_FILE = REPO / "costs" / "data" / "sources.toml"
DEFAULT_CONNECTIONS = {
    "aws_cost_explorer": "aws_default",
    "gcp_bigquery": "google_cloud_default",
    "azure_cost_management": "azure_default",
    "aws": "aws_default",
    "gcp": "google_cloud_default",
    "azure": "azure_default",
}
# Connection types, and the source kinds / providers they serve.
_FAMILY = {
    "aws": "aws", "aws_cost_explorer": "aws",
    "google_cloud_platform": "gcp", "gcp": "gcp", "gcp_bigquery": "gcp",
    "azure": "azure", "azure_cost_management": "azure",
}


def configured_sources(path: str | Path | None = None) -> list[dict[str, Any]]:
    """``[{"name", "kind", "connection"}, ...]`` from the sources file (``MLEDGE_COST_SOURCES`` or the shipped one).

    Cheap enough for DAG parsing; the workload checks the file fully when it runs.
    """
    path = Path(path or os.environ.get("MLEDGE_COST_SOURCES") or SOURCES_FILE)
    document = tomllib.loads(path.read_text())
    return [{"name": s["name"], "kind": s["kind"],
             "connection": s.get("connection") or DEFAULT_CONNECTIONS.get(s["kind"])}
            for s in document.get("source", [])]


def _extra(extras: Mapping[str, Any], *names: str) -> Any:
    """An extra under any of its names, including the provider packages' old ``extra__<type>__`` prefixes."""
    for name in names:
        for key in (name, f"extra__google_cloud_platform__{name}", f"extra__azure__{name}"):
            value = extras.get(key)
            if value not in (None, ""):
                return value
    return None


def connection_env(conn: Any, family: str, scratch: Path) -> dict[str, str]:
    """Environment variables for one Connection; ``scratch`` receives a key file when the Connection holds one."""
    extras = conn.extra_dejson or {}
    env: dict[str, str | None] = {}
    if family == "aws":
        env = {
            "AWS_ACCESS_KEY_ID": conn.login,
            "AWS_SECRET_ACCESS_KEY": conn.password,
            "AWS_SESSION_TOKEN": _extra(extras, "aws_session_token"),
            "AWS_DEFAULT_REGION": _extra(extras, "region_name"),
            "AWS_PROFILE": _extra(extras, "profile_name"),
        }
    elif family == "gcp":
        key_path = _extra(extras, "key_path")
        keyfile = _extra(extras, "keyfile_dict")
        if keyfile and not key_path:
            content = keyfile if isinstance(keyfile, str) else json.dumps(keyfile)
            descriptor, name = tempfile.mkstemp(prefix="gcp-key-", suffix=".json", dir=scratch)
            with os.fdopen(descriptor, "w") as handle:  # mkstemp: readable by this user only
                handle.write(content)
            key_path = name
        env = {
            "GOOGLE_APPLICATION_CREDENTIALS": key_path,
            "GOOGLE_CLOUD_PROJECT": _extra(extras, "project"),
            "GCP_PRICING_API_KEY": _extra(extras, "api_key"),
        }
    elif family == "azure":
        env = {
            "AZURE_CLIENT_ID": conn.login,
            "AZURE_CLIENT_SECRET": conn.password,
            "AZURE_TENANT_ID": _extra(extras, "tenantId", "tenant_id", "tenant"),
            "AZURE_SUBSCRIPTION_ID": _extra(extras, "subscriptionId", "subscription_id"),
            "AZURE_COST_SCOPE": _extra(extras, "scope"),
        }
    return {k: str(v) for k, v in env.items() if v not in (None, "")}


class CloudCostOperator(MledgeOperator):
    """``mledge costs ...`` for one cost source (or one provider's price refresh), with Connection credentials.

    ``source``: a configured source (``{"name", "kind", "connection"}``, as ``configured_sources`` lists them) or
    its name; the default arguments ingest it (``--trailing-days`` when given). ``arguments`` replaces them
    (e.g. ``["costs", "catalog", "refresh", "--provider", "aws"]`` with ``kind="aws"``).
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#fdf3e1"

    def __init__(self, *, source: Mapping[str, Any] | str | None = None, kind: str | None = None,
                 conn_id: str | None = None, trailing_days: int | str | None = None,
                 arguments: Sequence[str] | None = None, **kwargs: Any) -> None:
        self.source = {"name": source} if isinstance(source, str) else dict(source or {})
        self.kind = kind or self.source.get("kind")
        self.conn_id = conn_id or self.source.get("connection") or DEFAULT_CONNECTIONS.get(self.kind or "")
        if arguments is None:
            if not self.source.get("name"):
                raise ValueError("CloudCostOperator needs a source or explicit arguments")
            arguments = ["costs", "ingest", "--source", self.source["name"]]
            if trailing_days not in (None, ""):
                arguments += ["--trailing-days", str(trailing_days)]
        super().__init__(arguments=arguments, **kwargs)
        self._scratch: tempfile.TemporaryDirectory | None = None

    def task_env(self, context: Any) -> dict[str, str] | None:
        label = self.source.get("name") or " ".join(self.arguments)
        if not self.conn_id:
            return None
        try:
            conn = BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            self.log.warning("Connection %r is not defined: %s runs without Airflow credentials "
                             "(it is skipped unless the worker's environment has its own)", self.conn_id, label)
            return None
        family = _FAMILY.get(conn.conn_type or "") or _FAMILY.get(self.kind or "")
        if family is None:
            self.log.warning("Connection %r has type %r, which %s cannot use", self.conn_id, conn.conn_type, label)
            return None
        self._scratch = tempfile.TemporaryDirectory(prefix="mledge-cost-creds-")
        env = connection_env(conn, family, Path(self._scratch.name))
        # Names only, never values.
        self.log.info("Credentials of Connection %r passed to %s as %s", self.conn_id, label,
                      ", ".join(sorted(env)) or "nothing")
        return env

    def execute(self, context: Any) -> Any:
        try:
            result = super().execute(context)
        finally:
            if self._scratch is not None:
                self._scratch.cleanup()  # a key file written from the Connection lives only as long as the task
                self._scratch = None
        if isinstance(result, dict) and result.get("skipped"):
            name = result.get("source") or result.get("provider") or self.task_id
            self.log.warning("Skipped %s: %s", name, result["skipped"])
            raise AirflowSkipException(f"{name}: {result['skipped']}")
        return result
