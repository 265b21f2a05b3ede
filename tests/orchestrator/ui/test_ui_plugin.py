"""The MLEDGE plugin inside Airflow's own api-server app, with the real ``mledge`` program behind it.

Airflow's FastAPI app is built as ``airflow api-server`` builds it (``create_app``), so the plugin comes in through
its entry point, users log in through SimpleAuthManager's ``/auth/token``, Airflow's REST API is there and the
metadata database is real (SQLite under the test AIRFLOW_HOME, with the repository's DAGs synced into it). The app
is also served over HTTP at ``[api] base_url``: the review page records the drift Asset event by calling Airflow's
REST API there with the user's own token, as the api-server calls itself in the stack. Every page and JSON answer
comes from the workload's ``mledge`` command (MLEDGE_BIN) on a temporary MLEDGE_HOME whose platform database is
made by ``mledge db migrate``. ``mledge drift`` has no command that adds an alert by hand, so alerts are seeded
through the drift library's own ``AlertStore`` in the workload environment; costs are ingested from the shipped
sample exports with ``mledge costs``. The Federation page reads a registry and training runs that MLflow's own
client writes into a SQLite tracking store (as the ServerApp and the promotion would: run tags, per-round metrics,
model versions with tags and aliases), site stores made by ``mledge data init``, a SuperNode registry file in the
format ``mledge.security.node_keys`` keeps, and this month's training cost recorded by ``mledge costs
record-training``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import DAGS, REPO

MLEDGE = os.environ.get("MLEDGE_BIN") or str(REPO / ".venvs" / "workload" / "bin" / "mledge")
WORKLOAD_PYTHON = str(Path(MLEDGE).parent / "python")
MLFLOW_UI = "http://mlflow.example:5000"
PASSWORDS = {"admin": "admin-secret-pw", "viewer": "viewer-secret-pw", "analyst": "analyst-secret-pw",
             "operator": "operator-secret-pw"}
USERS = "admin:admin,viewer:viewer,analyst:user,operator:op"
ORIGIN = {"Origin": "http://testserver"}
RUN_ID = "0123456789abcdef0123456789abcdef"

ALERTS = [  # the order of ids: 1, 2, ...
    {"site": "plant_b", "batch": "batch-000005", "kind": "data", "statistic": 0.1667, "p_value": 3.5e-71,
     "decision": "drift", "report_uri": f"mlflow-artifacts:/7/{RUN_ID}/artifacts/reports/data_drift.html",
     "details": {"mlflow_run_id": RUN_ID, "mlflow_experiment_id": "7", "columns": {"torque_nm": {"p": 0.5}}}},
    {"site": "plant_b", "batch": "batch-000006", "kind": "concept", "statistic": 0.21, "p_value": 0.0004,
     "decision": "drift", "report_uri": None, "details": {}},
    {"site": "plant_a", "batch": "batch-000005", "kind": "data", "statistic": 0.02, "p_value": 0.81,
     "decision": "no_drift", "report_uri": None, "details": {}},
    {"site": "plant_c", "batch": "batch-000007", "kind": "data", "statistic": 0.3, "p_value": 0.001,
     "decision": "drift", "report_uri": None, "details": {}},
    {"site": "plant_c", "batch": "batch-000008", "kind": "data", "statistic": 0.31, "p_value": 0.002,
     "decision": "drift", "report_uri": None, "details": {}},
]
SEED = """
import json, os, sys
from drift.alerts import AlertStore
store = AlertStore(os.environ["MLEDGE_PLATFORM_DB_URL"])
print(json.dumps([store.add(**spec)["id"] for spec in json.loads(sys.argv[1])]))
"""
# Two training runs (newest last here, newest first on the page) with the round metrics the ServerApp logs, and
# the models the promotion registers from them.
RUNS = [
    {"flower": "4211", "dag_run": "manual__2026-11-20T09:00:00+00:00", "strategy": "fedavg",
     "metrics": {"eval_f1": [0.31, 0.52, 0.64], "plant_a/eval_f1": [0.35, 0.55, 0.70],
                 "plant_b/eval_f1": [0.20, 0.41, 0.58], "plant_c/eval_f1": [0.33, 0.57, 0.62],
                 "holdout/plant_a/candidate_f1": [0.7]}},
    {"flower": "4212", "dag_run": "asset_triggered__2026-11-21T10:00:00+00:00", "strategy": "fedqv",
     "metrics": {"eval_f1": [0.40, 0.66], "plant_a/eval_f1": [0.45, 0.71], "plant_b/eval_f1": [0.30, 0.61]}},
]
MODELS = {
    "global-axis_failures-federated": [
        {"run": 0, "reason": "first version: no champion to compare with", "alias": "champion"},
        {"run": 1, "reason": "plant_b: F1 0.61 < champion 0.64", "alias": "challenger"},
    ],
    "plant_a-axis_failures-federated": [{"run": 1, "reason": "beats the site champion by 0.03", "alias": "champion"}],
}
SEED_MLFLOW = """
import json, sys
import mlflow
from mledge.contracts import EXPERIMENT, TAG_DAG_RUN, TAG_FLOWER_RUN, TAG_REASON, TAG_STRATEGY
spec = json.loads(sys.argv[1])
client = mlflow.MlflowClient()
experiment = client.create_experiment(EXPERIMENT)
runs = []
for run in spec["runs"]:
    tags = {TAG_FLOWER_RUN: run["flower"], TAG_DAG_RUN: run["dag_run"], TAG_STRATEGY: run["strategy"]}
    run_id = client.create_run(experiment, run_name="flower-run-" + run["flower"], tags=tags).info.run_id
    for key, values in run["metrics"].items():
        for step, value in enumerate(values, start=1):
            client.log_metric(run_id, key, value, step=step)
    client.set_terminated(run_id)
    runs.append(run_id)
for name, versions in spec["models"].items():
    client.create_registered_model(name)
    for v in versions:
        run = spec["runs"][v["run"]]
        tags = {TAG_FLOWER_RUN: run["flower"], TAG_DAG_RUN: run["dag_run"], TAG_REASON: v["reason"]}
        version = client.create_model_version(name, "runs:/%s/model" % runs[v["run"]], run_id=runs[v["run"]], tags=tags)
        client.set_registered_model_alias(name, v["alias"], version.version)
print(json.dumps({"experiment_id": experiment, "runs": runs}))
"""


def workload(*args: str) -> dict | list:
    done = subprocess.run([MLEDGE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mledge {' '.join(args)}: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


def rows(html: str) -> dict[int, dict[str, str]]:
    """The alert rows of the drift page: id -> site, status and the row's own HTML."""
    found = {}
    pattern = r'<tr id="alert-(\d+)" data-alert-id="\d+" data-site="([^"]*)" data-status="([^"]*)">(.*?)</tr>'
    for alert_id, site, status, body in re.findall(pattern, html, flags=re.S):
        found[int(alert_id)] = {"site": site, "status": status, "html": body}
    return found


@pytest.fixture(scope="module")
def mledge_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("mledge-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLEDGE_HOME", str(home))
        env.setenv("MLEDGE_PLATFORM_DB_URL", f"sqlite:///{home / 'platform.db'}")
        env.setenv("MLEDGE_BIN", MLEDGE)
        env.setenv("MLEDGE_MLFLOW_UI_URL", MLFLOW_UI)
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        env.setenv("MLEDGE_TLS", "off")  # no CA in this home: the status probes speak plain HTTP on loopback
        migrated = workload("db", "migrate")
        assert "drift_alerts" in migrated["tables"]
        seeded = subprocess.run([WORKLOAD_PYTHON, "-c", SEED, json.dumps(ALERTS)], capture_output=True, text=True,
                                cwd=REPO, timeout=120)
        assert seeded.returncode == 0, seeded.stderr[-2000:]
        assert json.loads(seeded.stdout) == [1, 2, 3, 4, 5]
        yield home


@pytest.fixture(scope="module")
def federation(mledge_home):
    """Sites with two batches each, plant_a and plant_b with a registered SuperNode key, two training runs in
    MLflow with their models, and this month's training cost."""
    workload("data", "init", "--batches", "2")
    registry = mledge_home / "platform" / "flower" / "supernodes.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps({"nodes": [
        {"site": "plant_a", "fingerprint": "SHA256:test-a", "node_id": "9001"},
        {"site": "plant_b", "fingerprint": "SHA256:test-b", "node_id": "9002"},
    ]}))
    seeded = subprocess.run([WORKLOAD_PYTHON, "-c", SEED_MLFLOW, json.dumps({"runs": RUNS, "models": MODELS})],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    workload("costs", "catalog", "seed")
    cost = workload("costs", "record-training", "--flower-run-id", "4212", "--seconds-json",
                    json.dumps({"plant_a": 3600, "plant_b": 1800}))
    assert Decimal(cost["total"]) > 0
    return json.loads(seeded.stdout)


def _serve(app, port: int):
    """Serve ``app`` over HTTP on 127.0.0.1:``port`` in a thread, as ``airflow api-server`` serves it (uvicorn)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the api-server did not start"
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="module")
def api(mledge_home, tmp_path_factory, free_port):
    """The api-server's app (``create_app``) with SimpleAuthManager users admin, viewer, analyst (role "user")
    and operator (role "op"), served at ``[api] base_url`` and reached in-process by the tests (TestClient)."""
    secrets = tmp_path_factory.mktemp("airflow-secrets")
    (secrets / "passwords.json").write_text(json.dumps(PASSWORDS))
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", USERS)
        env.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(secrets / "passwords.json"))
        env.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "test-only-" + "x" * 64)
        env.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{port}")
        env.delenv("MLEDGE_AIRFLOW_URL", raising=False)
        from airflow.api_fastapi.app import create_app, purge_cached_app
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
        from airflow.models.dag import DagModel
        from airflow.utils.db import resetdb
        from airflow.utils.session import create_session
        from fastapi.testclient import TestClient
        from sqlalchemy import update

        resetdb()
        # The repository's DAGs, as the dag-processor would store them: federated_training is scheduled on
        # the drift Asset, so the Asset exists and an approval can queue the training.
        bag = DagBag(dag_folder=str(DAGS))
        assert bag.import_errors == {}
        DagBundlesManager().sync_bundles_to_db()
        sync_bag_to_db(bag, "dags-folder", None)
        with create_session() as session:
            session.execute(update(DagModel).values(is_paused=False))
        app = create_app("core")
        server, thread = _serve(app, port)
        yield TestClient(app)
        server.should_exit = True
        thread.join(timeout=30)
        purge_cached_app()


def token(api, user: str) -> str:
    response = api.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def browser(api, user: str):
    """A client holding the session cookie the UI sets after login, as a browser would."""
    from fastapi.testclient import TestClient

    client = TestClient(api.app)
    client.cookies.set("_token", token(api, user))
    return client


def bearer(api, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(api, user)}"}


def asset_events() -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        found = session.execute(
            select(AssetModel.uri, AssetEvent.id, AssetEvent.extra).join(
                AssetModel, AssetEvent.asset_id == AssetModel.id
            )
        ).all()
    return [{"uri": uri, "id": event_id, "extra": extra} for uri, event_id, extra in found]


def audit_log(event: str) -> list[str]:
    """Who did ``event``, as Airflow's audit log (the REST API's action logging) recorded it."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(session.scalars(select(Log.owner).where(Log.event == event).order_by(Log.id)))


def queued_dags() -> set[str]:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    with create_session() as session:
        queued = set(session.scalars(select(AssetDagRunQueue.target_dag_id)))
        session.execute(delete(AssetDagRunQueue))  # each test sees only what it queued
    return queued


def test_plugin_is_registered_with_its_nav_entries(api):
    from airflow import plugins_manager

    (plugin,) = [p for p in plugins_manager.get_plugin_info() if p["name"] == "mledge"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/mledge"]
    views = {v["name"]: v for v in plugin["external_views"]}
    assert list(views) == ["Federation", "Drift", "Costs"]
    assert views["Federation"]["url_route"] == "mledge-federation"
    assert views["Federation"]["href"] == "mledge/federation"
    assert views["Drift"]["url_route"] == "mledge-drift"
    assert views["Drift"]["href"] == "mledge/drift"
    assert views["Costs"]["href"] == "mledge/costs"
    assert api.get("/mledge/static/drift.svg").headers["content-type"].startswith("image/svg+xml")


def test_plugin_module_is_light_and_never_imports_the_workload():
    """Every task process loads plugins: the plugin module stays cheap and the app is built on first use; neither
    touches the workload's libraries (this environment does not have their dependencies)."""
    code = (
        "import json, sys\n"
        "heavy = ('fastapi', 'operators.ui.app', 'airflow.api_fastapi.app', 'drift', 'costs', 'fl')\n"
        "import operators.ui\n"
        "plugin = [m for m in heavy if m in sys.modules]\n"
        "operators.ui.MledgePlugin().fastapi_apps\n"
        "workload = [m for m in sys.modules if m.split('.')[0] in ('drift', 'costs', 'fl')\n"
        "            or m.startswith('mledge.') and m != 'mledge.contracts']\n"
        "print(json.dumps([plugin, workload]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[], []]


def test_anonymous_requests_get_401_or_the_login_page(api):
    assert api.get("/mledge/api/drift/alerts").status_code == 401
    assert api.post("/mledge/api/drift/alerts/1/review", json={"action": "approve"}).status_code == 401
    assert api.get("/mledge/api/costs/report").status_code == 401
    assert api.get("/mledge/api/federation").status_code == 401
    for path in ("/mledge/federation", "/mledge/drift", "/mledge/costs"):
        page = api.get(path, follow_redirects=False)
        assert page.status_code == 303
        login = urlsplit(page.headers["location"])
        assert login.path == "/auth/login"
        assert parse_qs(login.query)["next"] == [f"http://testserver{path}"]
    refused = api.post("/mledge/drift/alerts/1/approve", headers=ORIGIN, follow_redirects=False)
    assert refused.status_code == 303
    forged = api.get("/mledge/api/drift/alerts", headers={"Authorization": "Bearer not-a-jwt"})
    assert forged.status_code == 403


def test_drift_page_lists_alerts_by_site_with_links_to_mlflow(api):
    page = browser(api, "admin").get("/mledge/drift", params={"site": "plant_b"})
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    shown = rows(page.text)
    assert {i: r["site"] for i, r in shown.items()} == {1: "plant_b", 2: "plant_b"}
    first = shown[1]["html"]
    assert "3.50e-71" in first and "0.1667" in first
    assert f'href="{MLFLOW_UI}/#/experiments/7/runs/{RUN_ID}/artifactPath/reports/data_drift.html"' in first
    assert f'href="{MLFLOW_UI}/#/models/plant_b-axis_failures-federated"' in first
    assert f'href="{MLFLOW_UI}/#/models/global-axis_failures-federated"' in first
    assert "torque_nm" in first  # the details
    for action in ("acknowledge", "dismiss", "approve"):
        assert f'action="/mledge/drift/alerts/1/{action}"' in first
    assert "disabled" not in first


def test_status_filter_and_json_endpoint_agree_with_the_cli(api):
    client = browser(api, "viewer")
    listed = client.get("/mledge/api/drift/alerts", params={"status": "resolved"}).json()
    assert [(a["id"], a["site"], a["updated_by"]) for a in listed] == [(3, "plant_a", "system")]
    assert listed == [a for a in workload("drift", "alerts", "--json") if a["status"] == "resolved"]


def test_viewer_sees_alerts_but_may_not_act(api):
    viewer = browser(api, "viewer")
    assert viewer.get("/mledge/api/me").json()["permissions"] == {
        "view_federation": True, "view_drift": True, "view_costs": True, "review": False, "approve": False,
    }
    page = viewer.get("/mledge/drift", params={"site": "plant_c"})
    assert page.status_code == 200
    assert re.search(r'class="act act-approve" data-action="approve"\s+disabled', rows(page.text)[5]["html"])

    denied = viewer.post("/mledge/api/drift/alerts/5/review", json={"action": "approve"}, headers=ORIGIN)
    assert denied.status_code == 403
    assert "viewer may not approve retraining" in denied.json()["detail"]
    form = viewer.post("/mledge/drift/alerts/5/approve", data={"site": "plant_c"}, headers=ORIGIN)
    assert form.status_code == 403
    assert 'role="alert"' in form.text and "viewer may not approve retraining" in form.text
    assert rows(form.text)[5]["status"] == "new"  # the page re-read the alerts: nothing changed
    dismiss = viewer.post("/mledge/api/drift/alerts/5/review", json={"action": "dismiss"}, headers=ORIGIN)
    assert dismiss.status_code == 403


def test_admin_approval_is_recorded_and_queues_training(api):
    admin = browser(api, "admin")
    done = admin.post("/mledge/drift/alerts/1/approve", data={"site": "plant_b", "status": ""}, headers=ORIGIN,
                      follow_redirects=False)
    assert done.status_code == 303, done.text[-2000:]
    target = urlsplit(done.headers["location"])
    params = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert params["done"] == "approve" and params["alert"] == "1" and params["queued"] == "federated_training"
    assert params["decision"] == "drift"  # the page comes back with the filter it was sent from

    (event,) = [e for e in asset_events() if e["extra"].get("alert_id") == 1]
    assert event["uri"] == "mledge://axis_failures/drift"
    assert event["extra"]["site"] == "plant_b" and event["extra"]["requested_by"] == "admin"
    assert event["extra"]["alert_ids"] == [1]
    assert str(event["id"]) == params["event"]
    # Recorded through Airflow's public REST API, as the approving user.
    assert event["extra"]["from_rest_api"] is True
    assert audit_log("create_asset_event") == ["admin"]
    assert queued_dags() == {"federated_training"}

    page = admin.get(f"{target.path}?{target.query}")
    assert rows(page.text)[1]["status"] == "retraining"
    assert "Alert 1 approved for retraining." in page.text and "Queued: federated_training." in page.text
    (alert,) = [a for a in workload("drift", "alerts", "--json") if a["id"] == 1]
    assert (alert["status"], alert["updated_by"]) == ("retraining", "admin")


def test_user_role_acts_through_the_json_api_with_a_bearer_token(api):
    headers = bearer(api, "analyst")  # no Origin: an explicit token cannot be forged by another page
    assert api.get("/mledge/api/me", headers=headers).json()["permissions"] == {
        "view_federation": True, "view_drift": True, "view_costs": True, "review": True, "approve": False,
    }
    acknowledged = api.post("/mledge/api/drift/alerts/2/review", json={"action": "acknowledge"}, headers=headers)
    assert acknowledged.status_code == 200, acknowledged.text
    assert acknowledged.json()["asset_event"] is None
    assert (acknowledged.json()["alert"]["status"], acknowledged.json()["alert"]["updated_by"]) == (
        "acknowledged", "analyst")
    # The Asset event is recorded with the approver's own permissions: SimpleAuthManager's "user" role may trigger
    # the training DAG but not create Asset events, so the approval is refused before anything is recorded.
    refused = api.post("/mledge/api/drift/alerts/2/review", json={"action": "approve"}, headers=headers)
    assert refused.status_code == 403
    assert "analyst may not approve retraining" in refused.json()["detail"]
    assert "POST on Assets" in refused.json()["detail"]
    (alert,) = [a for a in workload("drift", "alerts", "--json") if a["id"] == 2]
    assert alert["status"] == "acknowledged"

    operator = bearer(api, "operator")
    assert api.get("/mledge/api/me", headers=operator).json()["permissions"]["approve"] is True
    approved = api.post("/mledge/api/drift/alerts/2/review", json={"action": "approve"}, headers=operator).json()
    assert (approved["alert"]["status"], approved["alert"]["updated_by"]) == ("retraining", "operator")
    assert approved["asset_event"]["queued_dag_ids"] == ["federated_training"]
    assert approved["asset_event"]["paused_dag_ids"] == []
    assert approved["asset_event"]["extra"]["alert_id"] == 2
    assert approved["asset_event"]["extra"]["requested_by"] == "operator"
    assert [e["id"] for e in asset_events() if e["extra"].get("alert_id") == 2] == [approved["asset_event"]["event_id"]]
    assert audit_log("create_asset_event")[-1] == "operator"
    assert queued_dags() == {"federated_training"}


def test_cli_refusals_and_failures_are_reported_not_raised(api, monkeypatch):
    headers = bearer(api, "admin")
    unknown = api.post("/mledge/api/drift/alerts/999/review", json={"action": "dismiss"}, headers=headers)
    assert unknown.status_code == 502
    assert "no drift alert with id 999" in unknown.json()["detail"]
    assert unknown.json()["command"].startswith("mledge drift review --alert-id 999 --action dismiss")
    assert api.post("/mledge/api/drift/alerts/4/review", json={"action": "explode"}, headers=headers).status_code == 400

    monkeypatch.setenv("MLEDGE_BIN", "/nonexistent/mledge")
    page = browser(api, "admin").get("/mledge/drift")
    assert page.status_code == 200
    assert "Could not load the drift alerts" in page.text and "/nonexistent/mledge" in page.text
    assert api.get("/mledge/api/drift/alerts", headers=headers).status_code == 502
    federation = browser(api, "viewer").get("/mledge/federation")
    assert federation.status_code == 200
    assert "Could not load the federation" in federation.text and "Could not load this month" in federation.text
    failed = api.get("/mledge/api/federation", headers=headers)
    assert failed.status_code == 502 and failed.json()["command"].startswith("mledge console federation")


def test_form_post_from_another_origin_is_refused(api):
    admin = browser(api, "admin")
    forged = admin.post("/mledge/drift/alerts/4/dismiss", headers={"Origin": "http://127.0.0.1:5000"})
    assert forged.status_code == 403
    assert "refused a form post from origin http://127.0.0.1:5000" in forged.text
    assert rows(forged.text)[4]["status"] == "new"
    assert admin.post("/mledge/api/drift/alerts/4/review", json={"action": "dismiss"}).status_code == 403


def test_approval_needs_the_asset(api):
    import asyncio

    from operators.ui.asset_events import AssetEventError, check_drift_asset

    admin = token(api, "admin")
    asset = asyncio.run(check_drift_asset(admin))  # the synced DAGs declare it
    assert asset["uri"] == "mledge://axis_failures/drift"
    assert [d["dag_id"] for d in asset["scheduled_dags"]] == ["federated_training"]
    with pytest.raises(AssetEventError, match="knows no Asset 'mledge://nowhere'"):
        asyncio.run(check_drift_asset(admin, "mledge://nowhere"))


def test_approval_is_refused_and_nothing_recorded_when_airflow_cannot_record_the_event(api, monkeypatch, free_port):
    before = asset_events()
    monkeypatch.setenv("MLEDGE_AIRFLOW_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    page = browser(api, "admin").post("/mledge/drift/alerts/5/approve", data={"site": "plant_c"}, headers=ORIGIN)
    assert page.status_code == 409
    assert "Retraining could not be triggered" in page.text and "did not answer" in page.text
    assert rows(page.text)[5]["status"] == "new"
    (alert,) = [a for a in workload("drift", "alerts", "--json") if a["id"] == 5]
    assert alert["status"] == "new"
    assert asset_events() == before


def test_approval_names_a_paused_consumer(api):
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    def pause(paused: bool) -> None:
        with create_session() as session:
            session.execute(update(DagModel).where(DagModel.dag_id == "federated_training").values(is_paused=paused))

    pause(True)
    try:
        admin = browser(api, "admin")
        done = admin.post("/mledge/drift/alerts/5/approve", data={"site": "plant_c"}, headers=ORIGIN,
                          follow_redirects=False)
        assert done.status_code == 303, done.text[-2000:]
        target = urlsplit(done.headers["location"])
        params = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert params["paused"] == "federated_training" and "queued" not in params
        page = admin.get(f"{target.path}?{target.query}")
        assert "Not queued because paused: federated_training" in page.text
        assert queued_dags() == set()
    finally:
        pause(False)


@pytest.fixture(scope="module")
def costs(mledge_home):
    workload("costs", "catalog", "seed")
    ingested = workload("costs", "ingest", "--source", "gcp-focus-sample", "--from", "2026-11-14", "--to", "2026-11-21")
    assert ingested.get("skipped") is None, ingested


def test_costs_page_shows_the_chart_totals_and_a_recommendation(api, costs):
    query = {"project": "axis_failures", "from": "2026-11-14", "until": "2026-11-20"}
    form = {**query, "vcpus": "8", "memory_gib": "32", "gpus": "1", "gpu_class": "T4", "regions": "", "hours": "10"}
    page = browser(api, "admin").post("/mledge/costs/recommend", data=form, headers=ORIGIN)
    assert page.status_code == 200
    assert 'role="alert"' not in page.text

    chart = re.search(r'<img id="cost-chart" src="data:image/svg\+xml;base64,([^"]+)"', page.text)
    assert chart and base64.b64decode(chart.group(1)).lstrip().startswith((b"<svg", b"<?xml"))
    # The CLI's --to is exclusive: the page's last day 2026-11-20 is --to 2026-11-21.
    report = workload("costs", "report", "--project", "axis_failures", "--from", "2026-11-14", "--to", "2026-11-21")
    assert Decimal(report["total"]) > 0
    provider_row = re.search(r'<table id="by-provider">.*?</table>', page.text, flags=re.S).group(0)
    assert "Google Cloud" in provider_row and f"{Decimal(report['total']):,.2f}" in provider_row
    # Each site's share of the project's cost: the report's sharing, row for row (none recorded here yet).
    by_site = re.search(r'<table id="by-site">.*?</table>', page.text, flags=re.S).group(0)
    assert [row["site"] for row in report["sharing"]["by_site"]] == re.findall(r'<tr data-site="([^"]+)">', by_site)
    if not report["sharing"]["by_site"]:
        assert "no training run in this period has shares yet" in by_site

    offers = re.findall(r'<tr class="offer">\s*<td>(\d+)</td><td>([^<]+)</td>', page.text)
    expected = workload("costs", "recommend", "--vcpus", "8", "--memory-gib", "32", "--gpus", "1",
                        "--gpu-class", "T4", "--hours", "10")
    assert offers, "the shipped price snapshot has T4 offers"
    assert offers == [(str(o["rank"]), o["provider"]) for o in expected["offers"]]


def test_costs_forms_name_the_bad_field(api):
    viewer = browser(api, "viewer")
    form = {"from": "2026-11-20", "until": "2026-11-10", "vcpus": "eight", "memory_gib": "32"}
    bad = viewer.post("/mledge/costs/recommend", data=form, headers=ORIGIN)
    assert bad.status_code == 200  # the page, with its forms marked: nothing was run
    assert "vcpus: &#39;eight&#39; is not a whole number" in bad.text
    assert "from: 2026-11-20 is not before the end of the range (2026-11-10)" in bad.text
    assert re.search(r'name="vcpus"[^>]*value="eight"[^>]*aria-invalid="true"', bad.text)
    dates = viewer.get("/mledge/api/costs/report", params={"from": "2026-11-20", "to": "2026-11-10"})
    assert dates.status_code == 400 and "from" in dates.json()["fields"]


# --- the drift page's decision filter and timeline -----------------------------------------------------------


def timelines(html: str) -> dict[str, str]:
    """site -> the SVG of its timeline on the drift page."""
    return dict(re.findall(r'<figure class="timeline" data-site="(\w+)">(.*?)</figure>', html, flags=re.S))


def test_drift_page_opens_on_confirmed_drift_with_a_timeline_per_site(api):
    client = browser(api, "viewer")
    alerts = workload("drift", "alerts", "--json")
    page = client.get("/mledge/drift")
    assert page.status_code == 200
    assert set(rows(page.text)) == {a["id"] for a in alerts if a["decision"] == "drift"} == {1, 2, 4, 5}
    assert re.search(r'<option value="drift" selected>drift \(confirmed\) \(4\)</option>', page.text)

    charts = timelines(page.text)
    assert list(charts) == ["plant_a", "plant_b", "plant_c"]  # every evaluation, clean ones included
    marks = {site: re.findall(r'<(circle|rect) class="mark decision-(\w+) kind-(\w+)"[^>]*data-alert-id="(\d+)"', svg)
             for site, svg in charts.items()}
    assert marks["plant_a"] == [("circle", "no_drift", "data", "3")]
    assert sorted(marks["plant_b"], key=lambda m: m[3]) == [("circle", "drift", "data", "1"),
                                                            ("rect", "drift", "concept", "2")]
    assert "plant_b batch-000005 data drift test: p = 3.5e-71, drift" in charts["plant_b"]

    one_site = client.get("/mledge/drift", params={"site": "plant_c"})
    assert list(timelines(one_site.text)) == ["plant_c"]
    everything = client.get("/mledge/drift", params={"decision": "any"})
    assert set(rows(everything.text)) == {a["id"] for a in alerts}
    clean = client.get("/mledge/api/drift/alerts", params={"decision": "no_drift"}).json()
    assert [a["id"] for a in clean] == [3]
    assert len(client.get("/mledge/api/drift/alerts").json()) == len(alerts)  # the API filters only when asked


# --- the federation page ---------------------------------------------------------------------------------------


SITE_ROW = (r'<tr id="site-(\w+)" data-site="\w+" data-supernode="([^"]*)" data-requires-training="(yes|no)">'
            r"(.*?)</tr>")


def this_months_cost() -> dict:
    today = datetime.now(UTC).date()
    return workload("costs", "report", "--from", today.replace(day=1).isoformat(),
                    "--to", (today + timedelta(days=1)).isoformat())


def test_federation_page_shows_sites_runs_models_and_cost(api, federation):
    page = browser(api, "viewer").get("/mledge/federation")
    assert page.status_code == 200, page.text[-2000:]
    html = unescape(page.text)
    alerts = workload("drift", "alerts", "--json")

    sites = {site: {"supernode": sn, "training": rt, "html": body}
             for site, sn, rt, body in re.findall(SITE_ROW, html, flags=re.S)}
    assert list(sites) == ["plant_a", "plant_b", "plant_c"]
    for site, row in sites.items():
        assert row["supernode"] == "not connected"  # no SuperNode runs here
        assert "batch-000002" in row["html"] and "2 batches" in row["html"]
        assert ("not registered" in row["html"]) == (site == "plant_c")
        opened = [a for a in alerts if a["site"] == site and a["decision"] == "drift"
                  and a["status"] in ("new", "acknowledged", "retraining")]
        assert re.findall(r'#(\d+)</a>', row["html"]) == [str(a["id"]) for a in opened]
    # plant_a has a champion and no open drift; plant_b and plant_c have no site model yet.
    assert {site: row["training"] for site, row in sites.items()} == {"plant_a": "no", "plant_b": "yes",
                                                                     "plant_c": "yes"}
    assert "no champion model" in sites["plant_c"]["html"]
    assert '<b id="min-clients">3</b>' in html and "cannot train now" in html

    # The last runs, newest first, each with its per-round chart and links to Airflow and MLflow.
    runs = re.findall(r'<article class="run" id="run-(\w+)".*?</article>', html, flags=re.S)
    assert runs == list(reversed(federation["runs"]))
    first = re.search(rf'<article class="run" id="run-{federation["runs"][0]}".*?</article>', html, flags=re.S)[0]
    assert 'href="/dags/federated_training/runs/manual__2026-11-20T09%3A00%3A00%2B00%3A00" target="_top"' in first
    experiment = federation["experiment_id"]
    assert f'href="{MLFLOW_UI}/#/experiments/{experiment}/runs/{federation["runs"][0]}"' in first
    series = dict(re.findall(r'<g class="series [^"]*" data-series="(\w+)">(.*?)</g>', first, flags=re.S))
    assert list(series) == ["plant_a", "plant_b", "plant_c", "global"]  # global drawn last, on top
    assert len(re.findall("<circle", series["global"])) == 3
    assert "global, round 3: 0.640" in series["global"] and "plant_b, round 1: 0.200" in series["plant_b"]
    second = re.search(rf'<article class="run" id="run-{federation["runs"][1]}".*?</article>', html, flags=re.S)[0]
    assert "plant_c" not in re.findall(r'data-series="(\w+)"', second)  # plant_c did not report in that run

    models = {(m, v): body for m, v, body in re.findall(
        r'<tr class="model-version" data-model="([^"]+)" data-version="(\d+)">(.*?)</tr>', html, flags=re.S)}
    assert set(models) == {("global-axis_failures-federated", "1"), ("global-axis_failures-federated", "2"),
                           ("plant_a-axis_failures-federated", "1")}
    assert "champion" in models[("global-axis_failures-federated", "1")]
    assert "first version: no champion to compare with" in models[("global-axis_failures-federated", "1")]
    assert "challenger" in models[("global-axis_failures-federated", "2")]
    assert "plant_b: F1 0.61 < champion 0.64" in models[("global-axis_failures-federated", "2")]
    assert 'data-model="plant_b-axis_failures-federated"><td>plant_b-axis_failures-federated</td>' in html

    cost = this_months_cost()
    assert Decimal(cost["total"]) > 0  # the training recorded this month
    assert f'id="cost-this-month">{Decimal(cost["total"]):,.2f} {cost["currency"]}' in html
    # What could not be read here (no SuperLink, no Airflow password file) is named, the rest is shown.
    assert "Part of the federation could not be read (superlink)" in html


def test_federation_json_matches_the_cli(api, federation):
    headers = bearer(api, "analyst")
    answer = api.get("/mledge/api/federation", headers=headers)
    assert answer.status_code == 200, answer.text[-2000:]
    document = answer.json()
    assert [s["site"] for s in document["sites"]] == ["plant_a", "plant_b", "plant_c"]
    assert [s["registered"] for s in document["sites"]] == [True, True, False]
    assert document["min_clients"] == 3 and document["summary"]["can_train"] is False
    assert [r["run_id"] for r in document["runs"]] == list(reversed(federation["runs"]))
    newest = document["runs"][0]
    assert (newest["flower_run_id"], newest["strategy"]) == ("4212", "fedqv")
    assert newest["rounds"]["global"] == [{"round": 1, "value": 0.40}, {"round": 2, "value": 0.66}]
    assert set(newest["rounds"]["sites"]) == {"plant_a", "plant_b"}
    aliases = document["models"]["global"]["aliases"]
    assert {alias: str(version) for alias, version in aliases.items()} == {"champion": "1", "challenger": "2"}
    assert document["cost_this_month"]["total"] == this_months_cost()["total"]
