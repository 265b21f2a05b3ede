"""The platform's doors for sites: a TLS gateway that forwards only the paths a site's processes need.

Flower 1.41 serves its Fleet, Control and Runtime APIs (and ``/docs``) on one HTTP port, and Flower OSS has no
authentication for the Control API (OIDC is enterprise-only: ``flwr.superlink.config_loader`` says so). Airflow's
api-server serves the UI, the REST API, the Execution API and the Edge worker API on one port too. So neither
port is published for sites: each listens on the platform side only (loopback locally, the internal network in
compose), and sites reach them through a gateway per service that forwards an allow-list of path prefixes and
answers 404 to everything else:

- ``fleet``: ``/v1/fleet/`` -> the SuperLink (a SuperNode needs nothing else; start-run, register-node,
  list-nodes and ``/docs`` stay on the platform side);
- ``edge``: ``/edge_worker/v1/`` and ``/execution/`` -> Airflow's api-server (what an edge worker and the tasks
  it runs call; the UI and the REST API stay on the platform side);
- ``mlflow``: MLflow's REST API -> the tracking server (a site loads the global model and its own, and logs its
  drift runs, as its own user; the UI stays on the platform side).

Requests and responses stream through unchanged (Flower signs each SuperNode request with the node's key; the
gateway neither needs nor sees a secret). The gateway speaks TLS with the project's CA-issued certificate.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the client library recomputes.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length"}
ROUTES = {
    "fleet": ("/v1/fleet/",),
    "edge": ("/edge_worker/v1/", "/execution/"),
    # MLflow's REST API (each site with its own identity and grants: mlflow/permissions.toml), not its UI.
    "mlflow": ("/api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/", "/api/3.0/mlflow/"),
}
# Never forwarded, whatever the route: MLflow's account and permission administration (a site has no business
# there, and an answer would tell an attacker which users exist).
DENIED = re.compile(r"^/api/[0-9.]+/mlflow/(users/|[^/]+/permissions/)")


@dataclass(frozen=True)
class GatewayConfig:
    upstream: str  # e.g. https://127.0.0.1:19091
    allow: tuple[str, ...]  # path prefixes that are forwarded
    ca_file: str | None = None  # to verify an https upstream
    timeout_s: float = 300.0  # Flower long-polls; a task's Execution API calls are short


def allowed(path: str, allow: Sequence[str]) -> bool:
    """Whether ``path`` is under one of the allowed prefixes, refusing dot segments that could climb out."""
    if any(segment in ("..", ".") for segment in path.split("/")) or "%2e" in path.lower() or "\\" in path:
        return False
    if DENIED.match(path) or "//" in path:
        return False
    return any(path.startswith(prefix) for prefix in allow)


def create_app(config: GatewayConfig) -> Starlette:
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else True
    client = httpx.AsyncClient(
        base_url=config.upstream, verify=verify, timeout=config.timeout_s, trust_env=False, follow_redirects=False
    )

    async def forward(request: Request):
        path = request.url.path
        if not allowed(path, config.allow):
            return PlainTextResponse("not available through this gateway\n", status_code=404)
        # Content-Length goes on: with it httpx streams the body as it came; without it, chunked, which the WSGI
        # servers behind (MLflow's Flask) read as an empty body, so a POST would lose its parameters.
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP or k.lower() == "content-length"]
        upstream = client.build_request(
            request.method, path, params=request.url.query, headers=headers, content=request.stream()
        )
        try:
            response = await client.send(upstream, stream=True)
        except httpx.TransportError as exc:
            return PlainTextResponse(f"upstream unavailable: {exc.__class__.__name__}\n", status_code=502)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in _HOP},
            background=BackgroundTask(response.aclose),
        )

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve(config: GatewayConfig, host: str, port: int, certfile: str, keyfile: str) -> None:
    """Run the gateway in the foreground until it is stopped (the stack's ``gateway-*`` components)."""
    import logging

    import uvicorn

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per forwarded request would drown the log
    uvicorn.run(
        create_app(config), host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
        log_level="warning", proxy_headers=False, server_header=False, date_header=False,
    )
