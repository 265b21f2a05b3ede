"""The hook that owns a cloud's Airflow Connection: it turns the Connection into that cloud SDK's environment.

Credentials never go into arguments or logs: ``CloudCredentialsHook.get_env`` reads the Connection
(``aws_default``, ``google_cloud_default``, ``azure_default``, or one per customer named in the sources file) and
returns the standard environment variables of that cloud's SDK, for one command's process:

| Connection type          | environment                                                                      |
|--------------------------|----------------------------------------------------------------------------------|
| aws                      | AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, |
|                          | AWS_PROFILE (extras aws_session_token, region_name, profile_name)                |
| google_cloud_platform    | GOOGLE_APPLICATION_CREDENTIALS (extra key_path, or keyfile_dict written to a     |
|                          | private temporary file removed by ``cleanup``), GOOGLE_CLOUD_PROJECT (project),  |
|                          | GCP_PRICING_API_KEY (api_key)                                                    |
| azure                    | AZURE_CLIENT_ID (login), AZURE_CLIENT_SECRET (password), AZURE_TENANT_ID,        |
|                          | AZURE_SUBSCRIPTION_ID, AZURE_COST_SCOPE (extras tenantId, subscriptionId, scope) |

A missing Connection (or one of a type no cloud uses) gives no environment, with a warning naming it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

# The Connection a source kind or a provider uses when the sources file names none.
DEFAULT_CONNECTIONS = {
    "aws_cost_explorer": "aws_default",
    "gcp_bigquery": "google_cloud_default",
    "azure_cost_management": "azure_default",
    "aws": "aws_default",
    "gcp": "google_cloud_default",
    "azure": "azure_default",
}
# Connection types, and the source kinds / providers they serve -> the cloud ("family") whose SDK reads the env.
FAMILY = {
    "aws": "aws", "aws_cost_explorer": "aws",
    "google_cloud_platform": "gcp", "gcp": "gcp", "gcp_bigquery": "gcp",
    "azure": "azure", "azure_cost_management": "azure",
}


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


class CloudCredentialsHook(BaseHook):
    """One cloud Connection as the environment its SDK reads; ``cleanup`` removes any key file it wrote.

    ``family``: the cloud to assume when the Connection's type does not say (a source kind such as
    ``aws_cost_explorer``, a provider such as ``gcp``, or a Connection type).
    """

    conn_name_attr = "conn_id"
    hook_name = "MLEDGE cloud credentials"

    def __init__(self, conn_id: str, family: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.family = FAMILY.get(family or "")
        self._scratch: tempfile.TemporaryDirectory | None = None

    def get_env(self, label: str = "the command") -> dict[str, str] | None:
        """The Connection's credentials as environment variables for ``label``; None without a usable Connection.

        Logs names only, never values.
        """
        try:
            conn = self.get_connection(self.conn_id)
        except AirflowNotFoundException:
            self.log.warning("Connection %r is not defined: %s runs without Airflow credentials "
                             "(it is skipped unless the worker's environment has its own)", self.conn_id, label)
            return None
        family = FAMILY.get(conn.conn_type or "") or self.family
        if family is None:
            self.log.warning("Connection %r has type %r, which %s cannot use", self.conn_id, conn.conn_type, label)
            return None
        self.cleanup()
        self._scratch = tempfile.TemporaryDirectory(prefix="mledge-cost-creds-")
        env = connection_env(conn, family, Path(self._scratch.name))
        self.log.info("Credentials of Connection %r passed to %s as %s", self.conn_id, label,
                      ", ".join(sorted(env)) or "nothing")
        return env

    def cleanup(self) -> None:
        """Remove the key file written from the Connection: it lives only as long as the command."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> CloudCredentialsHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
