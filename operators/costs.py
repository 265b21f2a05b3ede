"""Airflow's side of the cost layer: run ``mledge costs ...`` with credentials taken from an Airflow Connection.

``CloudCostOperator`` only orchestrates two hooks: ``CloudCredentialsHook`` (operators/hooks/cloud.py) owns the
source's Connection and turns it into the cloud SDK's environment variables, ``MledgeHook`` runs the command with
them. Credentials never go into arguments or logs. A missing Connection adds nothing: the command then finds no
credentials (unless the worker's own environment has some), answers ``{"skipped": reason}``, and the task ends as
skipped with that reason in its log.

This module imports nothing of the workload (no ``costs``): it runs in the Airflow environment and is read by
the dag-processor. ``configured_sources`` reads the sources file with tomllib only.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from mledge.contracts import REPO
from operators.hooks.cloud import DEFAULT_CONNECTIONS, CloudCredentialsHook
from operators.mledge import MledgeOperator

SOURCES_FILE = REPO / "costs" / "data" / "sources.toml"


def configured_sources(path: str | Path | None = None) -> list[dict[str, Any]]:
    """``[{"name", "kind", "connection"}, ...]`` from the sources file (``MLEDGE_COST_SOURCES`` or the shipped one).

    Cheap enough for DAG parsing; the workload checks the file fully when it runs.
    """
    path = Path(path or os.environ.get("MLEDGE_COST_SOURCES") or SOURCES_FILE)
    document = tomllib.loads(path.read_text())
    return [{"name": s["name"], "kind": s["kind"],
             "connection": s.get("connection") or DEFAULT_CONNECTIONS.get(s["kind"])}
            for s in document.get("source", [])]


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
        self._credentials: CloudCredentialsHook | None = None

    def task_env(self, context: Any) -> dict[str, str] | None:
        if not self.conn_id:
            return None
        self._credentials = CloudCredentialsHook(self.conn_id, family=self.kind)
        return self._credentials.get_env(self.source.get("name") or " ".join(self.arguments))

    def execute(self, context: Any) -> Any:
        try:
            result = super().execute(context)
        finally:
            if self._credentials is not None:
                self._credentials.cleanup()  # a key file written from the Connection lives only as long as the task
                self._credentials = None
        if isinstance(result, dict) and result.get("skipped"):
            name = result.get("source") or result.get("provider") or self.task_id
            self.log.warning("Skipped %s: %s", name, result["skipped"])
            raise AirflowSkipException(f"{name}: {result['skipped']}")
        return result
