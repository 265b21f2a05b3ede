"""End to end on the real stack: Airflow (api-server, scheduler, dag-processor), the MLflow tracking server, a
Flower SuperLink and three SuperNodes, all started by the project's own `mledge stack up` and stopped by PID.

Airflow's metadata database is PostgreSQL when one answers on 127.0.0.1:5432 (required when CI=true), else
SQLite. Two DAG runs go through Airflow's REST API, as the UI's Trigger button would; the registry is checked
through MLflow's REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import (
    DAG_ID,
    SITES,
    Platform,
    drift_alerts,
    failed_logs,
    finished,
    known_secrets,
    mails,
    run_dag,
    run_training,
    running_stack,
    site_aliases,
    site_owns,
    smtp_connection,
    smtp_server,
    stack_env,
    stack_ports,
    training_xcom,
)

from mledge.contracts import GLOBAL_MODEL
from mledge.onsite.schema import FEATURE_NAMES
from mledge.ops.airflow_api import AirflowApiError

pytestmark = pytest.mark.e2e

OPERATORS = "operators@plant.test"
WORKER_WAIT_S = 45  # how long a site's tasks wait for its edge worker before failing, naming it


@pytest.fixture(scope="module")
def platform(deployment_home, airflow_db_url, free_ports):
    home = deployment_home
    ports = stack_ports(free_ports, start=21000)
    schedule = home / "drift-schedule.json"  # plant_b's sensor reads 1.5 K high from its 3rd batch
    schedule.write_text(json.dumps([{"site": "plant_b", "onset_batch": 3, "kind": "sensor_offset", "offset_k": 1.5}]))
    os.chmod(schedule, 0o644)  # the sites' collection reads it
    (smtp_port,) = free_ports(1, start=ports["supernode"] + 100)
    env = stack_env(
        home,
        ports,
        # Only the test's own triggers run: the scheduled collection and evaluation wait for New Year.
        MLEDGE_COLLECTION_SCHEDULE="0 0 1 1 *",
        MLEDGE_DRIFT_SCHEDULE_CRON="0 0 1 1 *",
        MLEDGE_DRIFT_SCHEDULE=str(schedule),
        MLEDGE_EDGE_WORKER_WAIT_S=str(WORKER_WAIT_S),
        # Notifications by mail, through the SMTP provider, to the test's own SMTP server.
        MLEDGE_NOTIFY_EMAIL=OPERATORS,
        AIRFLOW_CONN_SMTP_DEFAULT=smtp_connection(smtp_port),
    )
    if airflow_db_url:
        env["MLEDGE_AIRFLOW_DB_URL"] = airflow_db_url
    with smtp_server(home / "smtp", smtp_port) as maildir, running_stack(home, env, ports, "--batches", "2") as stack:
        stack.maildir = maildir
        yield stack


def test_first_run_trains_logs_and_becomes_champion(platform):
    dag_run_id, xcom = run_training(platform, {"rounds": 2})
    flower_run_id = xcom["start_flower_run"]["run_id"]
    assert xcom["await_flower_run"]["status"] == "finished:completed"
    assert xcom["await_flower_run"]["site_failures"] == {}
    promotion = xcom["register_and_promote"]
    assert promotion["version"] == "1"
    assert promotion["alias"] == "champion"

    # Through MLflow's REST API: alias, lineage tags, per-round metrics.
    assert platform.aliases() == {"champion": "1"}
    run = platform.mlflow("runs/get", run_id=promotion["mlflow_run_id"])["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mledge.dag_run_id"] == dag_run_id
    assert tags["mledge.flower_run_id"] == flower_run_id
    for metric, steps in {"eval_f1": {0, 1, 2}, "eval_recall": {0, 1, 2}, "eval_accuracy": {0, 1, 2},
                          "eval_loss": {0, 1, 2}, "train_loss": {1, 2}}.items():
        history = platform.mlflow("metrics/get-history", run_id=run["info"]["run_id"], metric_key=metric)["metrics"]
        assert {m["step"] for m in history} == steps, metric
    version = platform.mlflow("model-versions/get", name=GLOBAL_MODEL, version="1")["model_version"]
    version_tags = {t["key"]: t["value"] for t in version["tags"]}
    assert version_tags["mledge.flower_run_id"] == flower_run_id
    assert version_tags["mledge.promotion"] == "champion"
    assert version_tags["mledge.data_window.plant_b"] == "batch-000001:batch-000002"

    # The version describes itself (a model card), names its features, and its run has figures and datasets.
    assert version["description"].startswith(f"### {GLOBAL_MODEL} v1: champion"), version["description"]
    assert "batch-000001:batch-000002" in version["description"] and "Held-out scores" in version["description"]
    lineage = registry_lineage(platform, GLOBAL_MODEL, "1", promotion["mlflow_run_id"])
    assert lineage["features"] == list(FEATURE_NAMES), lineage
    assert set(lineage["figures"]) >= {"figures/per_site_f1.png", "figures/confusion_matrix.png"}, lineage
    assert sorted(lineage["datasets"]) == [f"{s}:batch-000001:batch-000002" for s in SITES], lineage
    assert lineage["model_metrics"] >= {"holdout_f1", "holdout_recall"}, lineage

    # Each site's personalised model: its own registered model, champion at first.
    for site in SITES:
        assert promotion["site_models"][site]["alias"] == "champion"
        assert site_aliases(platform, site) == {"champion": "1"}


def poll_mail(platform, subject_start: str, timeout: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in mails(platform.maildir) if m["subject"].startswith(subject_start)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no mail {subject_start!r}: {mails(platform.maildir)}"
        time.sleep(1)


LINEAGE = """
import json, sys, mlflow
name, version, run_id = sys.argv[1:]
client = mlflow.MlflowClient()
info = mlflow.models.get_model_info(f"models:/{name}/{version}")
run = client.get_run(run_id)
model = mlflow.get_logged_model(info.model_id)
print(json.dumps({
    "features": info.signature.inputs.input_names(),
    "figures": [f.path for f in client.list_artifacts(run_id, "figures")],
    "datasets": [d.dataset.name for d in run.inputs.dataset_inputs],
    "model_metrics": sorted({m.key for m in model.metrics}),
}))
"""


def registry_lineage(platform, name: str, version: str, run_id: str) -> dict:
    """What MLflow's own client reads of a version as the platform: signature, the run's figures and datasets."""
    user, password = platform.mlflow_login()
    env = {**platform.env, "MLFLOW_TRACKING_URI": platform.mlflow_url, "MLFLOW_TRACKING_USERNAME": user,
           "MLFLOW_TRACKING_PASSWORD": password, "MLFLOW_TRACKING_SERVER_CERT_PATH": platform.ca}
    done = subprocess.run([sys.executable, "-c", LINEAGE, name, version, run_id], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    found["model_metrics"] = set(found["model_metrics"])
    return found


def test_second_run_survives_a_malformed_site_and_passes_the_gate(platform):
    # plant_c receives a batch with missing torque values: it must fail by name, the others must go on.
    # (A batch corrupted after it was accepted: collection's validation cannot have caught it.)
    store = platform.sites / "plant_c" / "batches"
    frame = pd.read_csv(store / "batch-000001.csv")
    frame.loc[::7, "torque_nm"] = None
    bad = store / "batch-000003.csv"
    frame.to_csv(bad, index=False)
    before = bad.read_bytes()
    try:
        _, xcom = run_training(platform, {"rounds": 2})
    finally:
        kept = bad.read_bytes()
        bad.rename(platform.home / "corrupted-by-the-test.csv")  # the test's own fault, out of the way
    failures = xcom["await_flower_run"]["site_failures"]
    assert list(failures) == ["plant_c"]
    assert all("missing values" in problem and "batch-000003.csv" in problem for problem in failures["plant_c"])
    assert kept == before  # training never rewrites a site's store

    promotion = xcom["register_and_promote"]
    assert promotion["version"] == "2"
    holdout = promotion["holdout"]
    assert sorted(holdout) == ["plant_a", "plant_b"]
    # The gate, restated from the evidence the sites computed: at least as good as the champion at every site.
    promoted = all(s["candidate"]["f1"] >= s["champion"]["f1"] for s in holdout.values())
    expected = {"champion": "2"} if promoted else {"champion": "1", "challenger": "2"}
    assert platform.aliases() == expected
    assert promotion["alias"] == ("champion" if promoted else "challenger")


def test_collection_quarantines_a_malformed_batch_and_the_run_says_so(platform):
    incoming = platform.sites / "plant_c" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(platform.sites / "plant_c" / "batches" / "batch-000001.csv")
    malformed = incoming / "mes-export-0001.csv"
    frame.drop(columns=["torque_nm"]).to_csv(malformed, index=False)
    site_owns(platform.sites / "plant_c", incoming, malformed)  # dropped there by the site's own export
    content = malformed.read_bytes()

    run_id, state, tasks = run_dag(platform, "data_collection", {"rows": 1000})
    assert state == "failed", tasks
    assert tasks["check_quarantine"] == "failed"
    assert all(tasks[f"{site}.collect"] == "success" for site in SITES), (
        tasks, failed_logs(platform, "data_collection", run_id, tasks))
    quarantine = platform.sites / "plant_c" / "quarantine"
    assert (quarantine / "mes-export-0001.csv").read_bytes() == content  # moved, never changed or dropped
    reason = json.loads(next(quarantine.glob("mes-export-0001.csv*.json")).read_text())
    assert "torque_nm" in json.dumps(reason)
    for site in SITES:  # the generated batch of every site was accepted
        assert (platform.sites / site / "batches" / "batch-000003.csv").exists()


def test_drift_at_plant_b_triggers_retraining_through_the_asset(platform):
    _, state, tasks = run_dag(platform, "data_collection", {"rows": 1000})
    assert state == "success", tasks
    client = platform.airflow()
    known = {r["dag_run_id"] for r in client.runs(DAG_ID)}

    drift_run, state, tasks = run_dag(platform, "concept_drift_evaluation", {"retraining": "auto", "simulations": 500})
    assert state == "success", (tasks, failed_logs(platform, "concept_drift_evaluation", drift_run, tasks))
    alerts = drift_alerts(platform)
    confirmed = [a for a in alerts if a["decision"] == "drift"]
    assert {a["site"] for a in confirmed} == {"plant_b"}, alerts
    assert all(a["batch"] >= "batch-000003" for a in confirmed)  # after the onset, never before
    assert {a["site"] for a in alerts} == set(SITES)  # every site was evaluated
    # The confirmed drift was mailed to the operators (DriftAlertNotifier, SMTP provider, the test's server).
    drift_mail = poll_mail(platform, "[MLEDGE] Drift confirmed at plant_b")
    assert drift_mail["to"] == OPERATORS and "retraining requested" in drift_mail["subject"], drift_mail
    assert all(f"#{a['id']}" in drift_mail["body"] and a["batch"] in drift_mail["body"] for a in confirmed)
    assert not [m for m in mails(platform.maildir) if "Drift confirmed at plant_a" in m["subject"]]

    run_id = client.wait_for_new_run(DAG_ID, known, timeout=180)
    assert client.dag_run(DAG_ID, run_id)["run_type"] == "asset_triggered"
    xcom = training_xcom(platform, run_id, *finished(platform, DAG_ID, run_id))
    promotion = xcom["register_and_promote"]
    linked = {int(i) for i in promotion["drift_alerts"].split(",")}
    assert linked == {a["id"] for a in confirmed}
    assert set(promotion["resolved_drift_alerts"]) == linked
    assert {a["status"] for a in drift_alerts(platform) if a["id"] in linked} == {"resolved"}
    # plant_c failed the second training, so it has one site model version fewer.
    for site, expected in {"plant_a": "3", "plant_b": "3", "plant_c": "2"}.items():
        entry = promotion["site_models"][site]
        assert entry["version"] == expected
        version = platform.mlflow("model-versions/get", name=entry["registered_model"], version=expected)
        version = version["model_version"]
        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert tags["mledge.drift_alerts"] == promotion["drift_alerts"]
        assert tags["mledge.dag_run_id"] == run_id
        assert tags[f"mledge.data_window.{site}"] == "batch-000002:batch-000004"
        assert site_aliases(platform, site)["champion"] in {"1", "2", expected}


def test_site_tasks_ran_on_their_own_sites_edge_worker(platform):
    client = platform.airflow()
    run = client.runs("data_collection", state="success", limit=1)[0]
    instances = {t["task_id"]: t for t in client.task_instances("data_collection", run["dag_run_id"])}
    for site in SITES:
        collect = instances[f"{site}.collect"]
        assert (collect["queue"], collect["executor"]) == (site, "EdgeExecutor"), collect
        assert collect["hostname"] == f"edge-{site}", collect  # the site's worker ran it, no other
    assert instances["check_quarantine"]["queue"] == "default"  # the platform's task, at the platform
    # The drift evaluation: every step that reads a site's store ran on that site's worker, the decision at the
    # platform (the drift test above ran it).
    run = client.runs("concept_drift_evaluation", state="success", limit=1)[0]
    instances = {t["task_id"]: t for t in client.task_instances("concept_drift_evaluation", run["dag_run_id"])}
    for site in SITES:
        for step in ("check_unprocessed", "evaluate_p_value", "measurements", "publish_decision"):
            task = instances[f"{site}.{step}"]
            assert (task["queue"], task["hostname"]) == (site, f"edge-{site}"), task
        for step in ("state", "determine_conceptdrift"):
            assert instances[f"{site}.{step}"]["queue"] == "default", instances[f"{site}.{step}"]


@pytest.mark.skipif(os.geteuid() != 0, reason="own Unix users need root (CI runs as root)")
def test_each_component_runs_as_its_own_user(platform):
    import pwd

    def user_of(pid: int) -> str:
        uid = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Uid:"))
        return pwd.getpwuid(uid).pw_name

    running = json.loads(platform.mledge("stack", "status").stdout)
    for name, state in running.items():
        expected = "mledge-platform" if state["side"] == "platform" else f"mledge-{name.split('-')[-1]}"
        assert state["pid"] and user_of(state["pid"]) == expected, (name, state)
    # The platform's home and each site's are private to their users.
    assert platform.platform_home.stat().st_mode & 0o777 == 0o700
    assert all((platform.sites / site).stat().st_mode & 0o777 == 0o700 for site in SITES)


def test_a_site_whose_worker_is_offline_fails_by_name_and_the_others_finish(platform):
    down = subprocess.run(
        [sys.executable, "-c", "import sys; from mledge.ops.settings import Settings; from mledge.ops.stack import "
         "processes; sys.exit(0 if processes(Settings()).stop('edge-worker-plant_c') else 1)"],
        env=platform.env, capture_output=True, text=True,
    )
    assert down.returncode == 0, down.stderr
    try:
        run_id, state, tasks = run_dag(platform, "data_collection", {"rows": 200})
        assert state == "failed", tasks
        assert tasks["plant_c.edge_worker"] == "failed" and tasks["plant_c.collect"] == "upstream_failed"
        assert all(tasks[f"{site}.collect"] == "success" for site in ("plant_a", "plant_b"))
        log = platform.airflow().task_log("data_collection", run_id, "plant_c.edge_worker")
        assert "site plant_c: edge worker not connected" in log
        summary = platform.airflow().task_log("data_collection", run_id, "check_quarantine")
        assert "plant_c: no batch collected" in summary
    finally:
        up = platform.mledge("stack", "up", timeout=600)  # the worker comes back ...
        assert up.returncode == 0, up.stderr
    _, state, tasks = run_dag(platform, "data_collection", {"rows": 200})  # ... and serves the next run
    assert state == "success", tasks


def _feature_tuples(platform: Platform) -> set[tuple[str, ...]]:
    """Every row of every site as its five readings, written as the store writes them."""
    found = set()
    for path in platform.sites.glob("*/batches/*.csv"):
        frame = pd.read_csv(path, dtype=str)
        columns = ["air_temperature_k", "process_temperature_k", "rotational_speed_rpm", "torque_nm", "tool_wear_min"]
        found |= set(map(tuple, frame[columns].to_numpy()))
    return found


NUMBER = r"-?\d+(?:\.\d+)?"


def _row_leaks(text: str, rows: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Rows of ``rows`` whose five readings appear in ``text`` in order, as CSV or as a JSON/Python list."""
    import re

    separator = r"['\"]?[,;\s]+['\"]?"
    # A lookahead at every number's start: overlapping windows of five numbers, whatever the quoting.
    pattern = re.compile(rf"(?<![\d.])(?=({NUMBER}){separator}({NUMBER}){separator}({NUMBER}){separator}({NUMBER})"
                         rf"{separator}({NUMBER}))")
    return [m.groups() for m in pattern.finditer(text) if m.groups() in rows]


def test_no_raw_row_of_any_site_reached_the_platform(platform, airflow_db_url):
    """XComs, task logs, the Airflow database and MLflow's artifacts: no site's row, as its exact readings."""
    rows = _feature_tuples(platform)
    assert len(rows) > 1000
    texts: dict[str, str] = {}
    client = platform.airflow()
    for dag_id in ("federated_training", "data_collection", "concept_drift_evaluation"):
        for run in client.runs(dag_id):
            for task in client.task_instances(dag_id, run["dag_run_id"]):
                if task["state"] != "success":
                    continue
                try:
                    value = client.xcom(dag_id, run["dag_run_id"], task["task_id"], map_index=task.get("map_index", -1))
                except AirflowApiError as exc:  # a sensor or an empty task returns nothing
                    assert "HTTP 404" in str(exc), exc
                    continue
                texts[f"xcom {dag_id} {task['task_id']}"] = json.dumps(value)
    for path in (platform.platform_home / "airflow" / "logs").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    for path in (platform.platform_home / "mlflow").rglob("*"):
        if path.is_file() and path.stat().st_size < 20_000_000:
            texts[str(path)] = path.read_bytes().decode("latin-1")
    if airflow_db_url:
        import psycopg2

        with psycopg2.connect(airflow_db_url.replace("postgresql+psycopg2", "postgresql")) as db, db.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            for (table,) in cur.fetchall():
                cur.execute(f'SELECT * FROM "{table}"')
                texts[f"airflow db {table}"] = "\n".join(map(str, cur.fetchall()))
    leaks = {where: found[:3] for where, text in texts.items() if (found := _row_leaks(text, rows))}
    assert leaks == {}


def test_mlflow_refuses_anonymous_and_other_sites(platform):
    url = f"{platform.mlflow_url}/api/2.0/mlflow/registered-models/get"
    assert requests.get(url, params={"name": GLOBAL_MODEL}, timeout=30).status_code == 401
    assert platform.mlflow("registered-models/get", identity="plant_a", name=GLOBAL_MODEL)["registered_model"]
    assert platform.mlflow("registered-models/get", identity="plant_a", name="plant_a-axis_failures-federated")
    other = requests.get(
        url, params={"name": "plant_b-axis_failures-federated"}, auth=platform.mlflow_login("plant_a"), timeout=30
    )
    assert other.status_code == 403


def test_airflow_refuses_anonymous_and_read_only_users(platform):
    for path in ("/api/v2/dags", f"/api/v2/dags/{DAG_ID}/dagRuns"):
        assert requests.get(platform.airflow_url + path, timeout=30).status_code == 401
    anonymous_trigger = requests.post(
        f"{platform.airflow_url}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None}, timeout=30
    )
    assert anonymous_trigger.status_code == 401
    viewer = platform.airflow("viewer")
    assert viewer.runs(DAG_ID)  # a viewer reads
    before = len(viewer.runs(DAG_ID))
    with pytest.raises(AirflowApiError, match="HTTP 403"):
        viewer.trigger(DAG_ID, {"rounds": 1})
    with pytest.raises(AirflowApiError, match="HTTP 403"):
        viewer.unpause("data_collection")
    assert len(viewer.runs(DAG_ID)) == before


def test_status_reports_sites_runs_and_models(platform):
    done = platform.mledge("status", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [(s["site"], s["connected"]) for s in status["sites"]] == [(s, True) for s in SITES]
    for site in status["sites"]:  # each site's edge worker: connected, serving the queue named after it
        worker = site["edge_worker"]
        assert (worker["connected"], worker["worker"]) == (True, f"edge-{site['site']}"), worker
        assert worker["last_heartbeat"]
    assert status["superlink"]["online_nodes"] == 3
    assert {r["status"] for r in status["flower_runs"]} == {"finished:completed"}
    (model,) = [m for m in status["registered_models"] if m["name"] == GLOBAL_MODEL]
    assert [v["version"] for v in model["versions"]] == ["3", "2", "1"]
    assert "champion" in model["aliases"]


# --- The security audit's findings (issue 12), tried again on the running stack ---------------------------


def test_the_sites_door_to_flower_serves_only_the_fleet_api(platform):
    """Finding 1: Control and Runtime APIs, /docs and the OpenAPI schema share the SuperLink's one port; sites
    reach it only through gateway-fleet, which passes the Fleet API alone, and the SuperLink listens on loopback."""
    fleet = f"https://127.0.0.1:{platform.ports['fleet']}"
    for path in ("/v1/control/start-run", "/v1/control/list-runs", "/v1/control/list-nodes",
                 "/v1/control/register-node", "/v1/serverappio/pull-messages", "/docs", "/openapi.json",
                 "/v1/fleet/../control/list-runs"):
        reply = requests.post(fleet + path, data=b"", timeout=30)
        assert reply.status_code == 404, (path, reply.status_code)
    # The Fleet API itself answers through the door, and still wants a registered node's signature.
    unsigned = requests.post(fleet + "/v1/fleet/get-run", data=b"", timeout=30)
    assert unsigned.status_code not in (200, 404), unsigned.status_code
    # Edge and MLflow doors: nothing of the Airflow UI/REST API or of MLflow's UI.
    edge = f"https://127.0.0.1:{platform.ports['edge']}"
    for path in ("/api/v2/dags", "/auth/token", "/edge_worker/ui/worker", "/"):
        assert requests.get(edge + path, timeout=30).status_code == 404, path
    mlflow_door = f"https://127.0.0.1:{platform.ports['mlflow_gateway']}"
    for path in ("/", "/static-files/index.html", "/api/2.0/mlflow/users/create", "/graphql"):
        assert requests.get(mlflow_door + path, timeout=30).status_code == 404, path


def _processes_of(platform: Platform) -> dict[int, str]:
    """Every process the stack runs, children included: pid -> component (by process group and by user)."""
    running = json.loads(platform.mledge("stack", "status").stdout)
    groups = {state["pid"]: name for name, state in running.items() if state.get("pid")}
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) in groups:  # field 5 of /proc/<pid>/stat: the process group
            found[int(stat.parent.name)] = groups[int(fields[2])]
    return found


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(address, hex local address) of every TCP socket in LISTEN that one of ``pids`` holds."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append((table, fields[1]))
    return found


LOOPBACK = ("0100007F:", "00000000000000000000000001000000:", "0000000000000000FFFF00000100007F:")


@pytest.mark.skipif(os.geteuid() != 0, reason="reading other users' sockets needs root (CI runs as root)")
def test_every_process_of_the_stack_listens_on_loopback_only(platform):
    """Finding 9 and its class: no log server, health server or API of any component on another address."""
    pids = _processes_of(platform)
    assert {"airflow-triggerer", "superlink", "supernode-plant_a", "edge-worker-plant_a"} <= set(pids.values())
    listening = _listening(set(pids))
    assert len(listening) >= 6  # Airflow, MLflow, the SuperLink, three gateways, SuperNodes' ClientAppIo
    assert [where for where in listening if not where[1].startswith(LOOPBACK)] == []


def test_the_platforms_web_servers_speak_tls_1_2_or_newer_only(platform):
    """Finding 11: passwords never cross in the clear, and old TLS is refused."""
    import socket
    import ssl

    for port in (platform.ports["airflow"], platform.ports["mlflow"], platform.ports["edge"],
                 platform.ports["mlflow_gateway"], platform.ports["fleet"]):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(platform.ca)
        old.check_hostname = False
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, pytest.raises(ssl.SSLError):
            old.wrap_socket(raw).close()
        good = ssl.create_default_context(cafile=platform.ca)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with good.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3"), port


@pytest.mark.skipif(os.geteuid() != 0, reason="reading other users' environments needs root (CI runs as root)")
def test_no_site_process_holds_a_credential_of_the_platform_or_another_site(platform):
    """Finding 4 and its class, after the `stack up` of a running stack above (the audit's case): every process of
    a site, children included, holds only its own site's secrets, and the edge workers' documented signing key."""
    secrets = known_secrets(platform.home)
    checked = 0
    for pid, component in _processes_of(platform).items():
        if not component.endswith(SITES):
            continue
        site = component.rsplit("-", 1)[1]
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        held = [where for where, value in secrets.items() if value in environ
                and not where.endswith(f":{site}") and "JWT_SECRET" not in where]
        assert held == [], (component, pid, held)
        checked += 1
    assert checked >= 2 * len(SITES)


@pytest.mark.skipif(os.geteuid() != 0, reason="own Unix users need root (CI runs as root)")
def test_nothing_in_a_home_is_open_to_other_users(platform):
    """Finding 5: databases, logs, stores, MLflow's auth database: owner only, whatever wrote them."""
    homes = [platform.platform_home, *(platform.sites / site for site in SITES)]
    open_to_others = [
        f"{oct(path.lstat().st_mode & 0o777)} {path}"
        for home in homes for path in (home, *home.rglob("*"))
        if not path.is_symlink() and path.lstat().st_mode & 0o077
    ]
    assert open_to_others == []


def _load_as_site(platform: Platform, site: str, model: str) -> subprocess.CompletedProcess:
    """A site's own identity loads ``model``'s champion through the MLflow gateway, as its SuperNode would."""
    env = dict(platform.env)
    env.update(
        MLFLOW_TRACKING_URI=f"https://127.0.0.1:{platform.ports['mlflow_gateway']}",
        MLFLOW_TRACKING_USERNAME=site,
        MLFLOW_TRACKING_PASSWORD=json.loads((platform.secrets / "mlflow_users.json").read_text())["users"][site],
        MLFLOW_TRACKING_SERVER_CERT_PATH=platform.ca,
    )
    # pyfunc: whichever flavour the champion's family is logged with (pytorch or xgboost)
    code = f"import mlflow.pyfunc; print(type(mlflow.pyfunc.load_model('models:/{model}@champion')).__name__)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_a_site_loads_its_own_and_the_global_champion_and_no_other(platform):
    """Finding 10: a site downloads the models it is entitled to with its own identity, and nothing else."""
    own = _load_as_site(platform, "plant_a", "plant_a-axis_failures-federated")
    assert own.returncode == 0, own.stderr[-3000:]
    shared = _load_as_site(platform, "plant_a", GLOBAL_MODEL)
    assert shared.returncode == 0, shared.stderr[-3000:]
    other = _load_as_site(platform, "plant_a", "plant_b-axis_failures-federated")
    # MLflow answers 403: PERMISSION_DENIED from its REST handlers, "Permission denied" from its auth layer.
    assert other.returncode != 0 and ("PERMISSION_DENIED" in other.stderr or "error code 403" in other.stderr), (
        other.stderr[-3000:])


def test_no_drift_report_left_its_site(platform):
    """Finding 3: Evidently's HTML (row-ordered series, exact extremes) stays in the site's home."""
    assert list((platform.platform_home / "mlflow").rglob("*.html")) == []
    assert any(platform.sites.glob("*/drift/**/*.html"))


def test_no_secret_in_logs_or_xcom(platform):
    """After everything above: no generated secret appears in any log of the stack or the tasks, or in XCom."""
    secrets = known_secrets(platform.home)
    assert any("admin" in where for where in secrets), sorted(secrets)
    logs = [p for p in platform.home.rglob("*.log") if p.is_file()]
    logs += [p for p in (platform.platform_home / "airflow" / "logs").rglob("*") if p.is_file()]
    logs += [p for p in platform.sites.glob("*/edge/logs/**/*") if p.is_file()]
    assert logs
    leaks = [
        f"{where} in {path.relative_to(platform.home)}"
        for path in logs
        for where, value in secrets.items()
        if value in path.read_text(errors="replace")
    ]
    assert leaks == []
    client = platform.airflow()
    for run in client.runs(DAG_ID):
        for task in client.task_instances(DAG_ID, run["dag_run_id"]):
            if task["state"] == "success":
                value = json.dumps(client.xcom(DAG_ID, run["dag_run_id"], task["task_id"]))
                assert not [w for w, v in secrets.items() if v in value], task["task_id"]
