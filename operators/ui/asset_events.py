"""An approved drift alert becomes an Airflow Asset event: the DAGs scheduled on the drift Asset then run.

Recorded through Airflow's public REST API, as the person who approved: the page forwards the requesting user's
own token (the ``Authorization: Bearer`` header, or the ``_token`` cookie the UI holds) to
``POST /api/v2/assets/events``, so Airflow applies that user's permissions and keeps the event as any other
created through its API. The Asset's id comes from ``GET /api/v2/assets?uri_pattern=...``; which DAGs the event
queued from ``GET /api/v2/assets/{id}/queuedEvents``, and which consumers were not queued because they are paused
from ``GET /api/v2/dags/{dag_id}``. The event's ``extra`` says which alert, site and person caused it (lineage
for training).

The api-server calls itself at ``MLEDGE_AIRFLOW_URL`` (its address inside the deployment, when set), else at
``[api] base_url`` (``AIRFLOW__API__BASE_URL``), else at ``http://127.0.0.1:<[api] port>``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from mledge.contracts import DRIFT_ASSET_URI, EVENT_ALERT_IDS, EVENT_REQUESTED_BY, EVENT_SITE

TIMEOUT_S = 10.0
SOURCE = "mledge-drift-review"


class AssetEventError(RuntimeError):
    """The drift Asset is unknown to Airflow, or its event could not be recorded."""


def api_base_url() -> str:
    """Where this api-server answers its own REST API (without a trailing slash)."""
    from airflow.configuration import conf

    url = (
        os.environ.get("MLEDGE_AIRFLOW_URL")
        or conf.get("api", "base_url", fallback=None)
        or f"http://127.0.0.1:{conf.get('api', 'port', fallback='8080')}"
    )
    return url.rstrip("/")


class _Rest:
    """Airflow's REST API (``/api/v2``) as one user: every call carries that user's token."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, f"/api/v2{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise AssetEventError(
                f"Airflow's REST API at {self.client.base_url} did not answer {method} /api/v2{path}: "
                f"{exc or type(exc).__name__}"
            ) from exc

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        if response.is_error:
            raise AssetEventError(f"Airflow's REST API refused {method} /api/v2{path}: {_problem(response)}")
        return _body(response)


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AssetEventError(f"Airflow's REST API answered {response.request.url.path} with no JSON object")
    return body


def _problem(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"HTTP {response.status_code}" + (f": {detail}" if detail else "")


@asynccontextmanager
async def _rest(token: str) -> AsyncIterator[_Rest]:
    if not token:
        raise AssetEventError("no token of the requesting user to call Airflow's REST API with")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=api_base_url(), headers=headers, timeout=TIMEOUT_S) as client:
        yield _Rest(client)


async def _asset(rest: _Rest, uri: str) -> dict[str, Any]:
    # uri_pattern is a substring match (``_`` matches any character): keep the exact URI only.
    found = await rest.json("GET", "/assets", params={"uri_pattern": uri, "limit": 100})
    for asset in found.get("assets", []):
        if asset.get("uri") == uri:
            return asset
    raise AssetEventError(
        f"Airflow knows no Asset {uri!r}: no parsed DAG is scheduled on it or produces it "
        "(is the federated_training DAG parsed?), so an approval could not start retraining"
    )


async def check_drift_asset(token: str, uri: str = DRIFT_ASSET_URI) -> dict[str, Any]:
    """Fail before an approval is recorded if its Asset event could not be emitted; returns the Asset."""
    async with _rest(token) as rest:
        return await _asset(rest, uri)


async def _paused(rest: _Rest, dag_ids: list[str]) -> list[str]:
    """Those of ``dag_ids`` that are paused (a DAG the user may not read is left out)."""
    paused = []
    for dag_id in dag_ids:
        response = await rest.call("GET", f"/dags/{quote(dag_id, safe='')}")
        if response.is_success and _body(response).get("is_paused"):
            paused.append(dag_id)
    return sorted(paused)


async def emit_drift_approval(alert: dict, user: str, token: str, uri: str = DRIFT_ASSET_URI) -> dict[str, Any]:
    """Record the Asset event for an approved alert as ``user``; returns the event and which DAGs it queued or not."""
    # The same keys as the automatic path (operators.drift.RequestRetrainingOperator), plus this alert's own.
    extra = {
        EVENT_SITE: alert.get("site"),
        EVENT_ALERT_IDS: [alert.get("id")],
        EVENT_REQUESTED_BY: user,
        "alert_id": alert.get("id"),
        "batch": alert.get("batch"),
        "kind": alert.get("kind"),
        "source": SOURCE,
    }
    async with _rest(token) as rest:
        asset = await _asset(rest, uri)
        response = await rest.call("POST", "/assets/events", json={"asset_id": asset["id"], "extra": extra})
        if response.status_code == 404:
            raise AssetEventError(f"Airflow did not record an event for Asset {uri!r}; see the api-server log")
        if response.is_error:
            raise AssetEventError(f"Airflow refused the event for Asset {uri!r}: {_problem(response)}")
        event = _body(response)
        queued = await rest.json("GET", f"/assets/{asset['id']}/queuedEvents")
        consumers = sorted({ref["dag_id"] for ref in asset.get("scheduled_dags", [])})
        return {
            "asset_uri": uri,
            "event_id": event["id"],
            "timestamp": event["timestamp"],
            "extra": event.get("extra") or extra,
            "queued_dag_ids": sorted({q["dag_id"] for q in queued.get("queued_events", [])}),
            # A paused consumer is not queued: Airflow drops the trigger, so the page says so.
            "paused_dag_ids": await _paused(rest, consumers),
        }
