"""The gateways that are the sites' only doors: allowed paths pass unchanged (both ways), everything else is 404.

The upstream here is a real HTTP server on a free local port (a tiny echo app), the gateway the real app that
`mledge gateway` serves, both driven through httpx over real sockets; the SuperLink behind a real gateway is in
test_trust_boundaries.py.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mledge.ops.gateway import ROUTES, GatewayConfig, allowed, create_app


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {"method": request.method, "path": request.url.path, "query": request.url.query, "body": body.decode(),
         "signature": request.headers.get("x-signature")},
        headers={"x-upstream": "yes"},
    )


class Server:
    """A uvicorn server in a thread of the test process, on a free port; stopped at the end."""

    def __init__(self, app, port: int, interface: str = "auto") -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", interface=interface)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="module")
def gateway(free_ports):
    upstream_port, gateway_port = free_ports(2)
    upstream = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "PUT"])])
    app = create_app(GatewayConfig(upstream=f"http://127.0.0.1:{upstream_port}", allow=ROUTES["fleet"]))
    with Server(upstream, upstream_port), Server(app, gateway_port):
        yield f"http://127.0.0.1:{gateway_port}"


def test_the_fleet_api_passes_unchanged(gateway):
    reply = httpx.post(f"{gateway}/v1/fleet/pull-messages?x=1", content=b"\x00\x01proto",
                       headers={"x-signature": "node-signed"})
    assert reply.status_code == 200 and reply.headers["x-upstream"] == "yes"
    assert reply.json() == {"method": "POST", "path": "/v1/fleet/pull-messages", "query": "x=1",
                            "body": "\x00\x01proto", "signature": "node-signed"}


@pytest.mark.parametrize(
    "path",
    ["/v1/control/start-run", "/v1/control/list-nodes", "/v1/control/register-node", "/docs", "/openapi.json",
     "/health", "/v1/fleet/../control/start-run", "/v1/fleet/%2e%2e/control/list-runs", "/v1/fleetx", "/"],
)
def test_everything_else_is_refused(gateway, path):
    reply = httpx.post(f"{gateway}{path}", content=b"{}")
    assert reply.status_code == 404
    assert "x-upstream" not in reply.headers


def test_the_path_rule_itself():
    assert allowed("/edge_worker/v1/worker/edge-plant_a", ROUTES["edge"])
    assert allowed("/execution/task-instances/1/run", ROUTES["edge"])
    for path in ("/api/v2/dags", "/auth/token", "/edge_worker/ui/worker", "/edge_worker/v1/../../api/v2/dags",
                 "/execution\\..\\api"):
        assert not allowed(path, ROUTES["edge"]), path
    # MLflow's REST API for a site's runs and models, never its account and permission administration.
    for path in ("/api/2.0/mlflow/runs/create", "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/decision.json",
                 "/api/2.0/mlflow/registered-models/alias"):
        assert allowed(path, ROUTES["mlflow"]), path
    for path in ("/api/2.0/mlflow/users/create", "/api/2.0/mlflow/users/update-admin",
                 "/api/2.0/mlflow/experiments/permissions/update", "/api/2.0/mlflow/registered-models/permissions/get",
                 "/api/3.0/mlflow/users/get", "/api/2.0/mlflow//users/create"):
        assert not allowed(path, ROUTES["mlflow"]), path


def test_an_unreachable_upstream_is_a_clear_502(free_ports):
    dead, port = free_ports(2)
    app = create_app(GatewayConfig(upstream=f"http://127.0.0.1:{dead}", allow=ROUTES["fleet"]))
    with Server(app, port):
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/fleet/get-run", content=b"")
    assert reply.status_code == 502 and "upstream unavailable" in reply.text


def test_a_post_reaches_a_wsgi_server_behind_with_its_body(free_ports):
    """MLflow's tracking server is Flask (WSGI) behind uvicorn: a chunked request body reads as empty there, so a
    site's `runs/create` would arrive without its experiment id. The gateway forwards the body as it came."""
    from flask import Flask, request

    flask = Flask("upstream")

    @flask.post("/api/2.0/mlflow/runs/create")
    def create_run():
        return {"experiment_id": (request.get_json(silent=True) or {}).get("experiment_id"),
                "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")}

    upstream_port, gateway_port = free_ports(2)
    app = create_app(GatewayConfig(upstream=f"http://127.0.0.1:{upstream_port}", allow=ROUTES["mlflow"]))
    with Server(flask, upstream_port, interface="wsgi"), Server(app, gateway_port):
        reply = httpx.post(f"http://127.0.0.1:{gateway_port}/api/2.0/mlflow/runs/create", json={"experiment_id": "7"})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"experiment_id": "7", "chunked": False}
