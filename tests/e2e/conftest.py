"""What both end-to-end modules need to run the real stack: a deployment home its users can reach, and the
environment `mledge stack up` gets (free ports, only the test's own settings)."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from mledge.contracts import GLOBAL_MODEL
from mledge.ops.airflow_api import AirflowClient, password_for
from mledge.ops.processes import group_alive

BIN = Path(sys.executable).parent
DAG_ID = "federated_training"
SITES = ("plant_a", "plant_b", "plant_c")
# Settings of the developer's shell that would point the test's stack elsewhere.
DROPPED = ("MLFLOW_TRACKING_URI", "FLWR_HOME", "PYTHONPATH", "MLEDGE_AIRFLOW_DB_URL", "MLEDGE_PLATFORM_DB_URL",
           "MLEDGE_COST_DB_URL", "MLEDGE_DRIFT_SCHEDULE", "MLEDGE_PLATFORM_HOME", "MLEDGE_DATA_ROOT",
           "MLEDGE_SIMULATION_SITES")


@pytest.fixture(scope="module")
def deployment_home() -> Iterator[Path]:
    """A fresh MLEDGE_HOME outside pytest's tmp folders: those are private to root, and as root the stack runs
    the platform and each site as their own users, who must pass through it to their homes."""
    home = Path(tempfile.mkdtemp(prefix="mledge-e2e-"))
    os.chmod(home, 0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def stack_env(home: Path, ports: Mapping[str, int], **extra: str) -> dict[str, str]:
    """The environment of the test's `mledge` commands: the shell's, less what would point elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(
        MLEDGE_HOME=str(home),
        MLEDGE_AIRFLOW_PORT=str(ports["airflow"]),
        MLEDGE_MLFLOW_PORT=str(ports["mlflow"]),
        MLEDGE_SUPERLINK_PORT=str(ports["superlink"]),
        MLEDGE_FLEET_PORT=str(ports["fleet"]),
        MLEDGE_EDGE_PORT=str(ports["edge"]),
        MLEDGE_MLFLOW_GATEWAY_PORT=str(ports["mlflow_gateway"]),
        MLEDGE_SUPERNODE_PORT=str(ports["supernode"]),
        MLEDGE_VENVS=str(BIN.parent.parent),  # the environments of the interpreter running the tests
        **extra,
    )
    return env


@contextmanager
def smtp_server(folder: Path, port: int) -> Iterator[Path]:
    """A real SMTP server on loopback (aiosmtpd, from the orchestrator environment) that keeps every mail it
    receives in a Maildir under ``folder``; stopped by its PID."""
    python = BIN.parent.parent / "orchestrator" / "bin" / "python"
    folder.mkdir(parents=True, exist_ok=True)
    maildir = folder / "maildir"
    process = subprocess.Popen(
        [str(python), "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Mailbox",
         str(maildir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # listening once a connection is greeted
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5):
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield maildir
    finally:
        process.terminate()
        process.wait(timeout=30)


def smtp_connection(port: int) -> str:
    """The Airflow Connection (AIRFLOW_CONN_SMTP_DEFAULT) of ``smtp_server``: plain SMTP on loopback."""
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 30,
                                 "from_email": "airflow@mledge.test"}})


def mails(maildir: Path) -> list[dict[str, str]]:
    """Subject, recipients and body of every mail the server kept."""
    import mailbox

    found = []
    if not (maildir / "new").exists():
        return found
    for message in mailbox.Maildir(maildir, create=False):
        body = "".join(part.get_payload(decode=True).decode(errors="replace")
                       for part in message.walk() if not part.is_multipart())
        found.append({"subject": str(message["Subject"]), "to": str(message["To"]), "body": body})
    return found


def stack_ports(free_ports, start: int) -> dict[str, int]:
    """Free ports for one stack: Airflow, MLflow, the SuperLink, the three gateways, and three SuperNodes."""
    airflow, mlflow, superlink, fleet, edge, mlflow_gateway, supernode, *_ = free_ports(9, start=start)
    return {"airflow": airflow, "mlflow": mlflow, "superlink": superlink, "fleet": fleet, "edge": edge,
            "mlflow_gateway": mlflow_gateway, "supernode": supernode}


def run_mledge(env: Mapping[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mledge"), *args], env=dict(env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def airflow_db_url():
    import psycopg2

    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError:
        if os.environ.get("CI", "").lower() == "true":
            raise
        yield None  # no PostgreSQL here: the product default, SQLite
        return
    admin.autocommit = True
    name = f"mledge_e2e_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


class Platform:
    def __init__(self, home: Path, env: dict[str, str], airflow_port: int, mlflow_port: int) -> None:
        self.home, self.env = home, env
        self.platform_home, self.sites = home / "platform", home / "sites"
        self.secrets = self.platform_home / "secrets"
        # TLS with the platform's own CA (the bundle beside it also holds the system's public CAs).
        self.airflow_url = f"https://127.0.0.1:{airflow_port}"
        self.mlflow_url = f"https://127.0.0.1:{mlflow_port}"
        self.ca = str(self.secrets / "tls" / "ca-bundle.pem")

    def mledge(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_mledge(self.env, *args, timeout=timeout)

    def airflow(self, user: str = "admin") -> AirflowClient:
        password = password_for(self.secrets / "airflow_passwords.json", user)
        return AirflowClient(self.airflow_url, user, password, timeout=120, verify=self.ca)

    def mlflow_login(self, identity: str = "platform") -> tuple[str, str]:
        users = json.loads((self.secrets / "mlflow_users.json").read_text())["users"]
        return identity, users[identity]

    def mlflow(self, path: str, identity: str = "platform", **params) -> dict:
        response = requests.get(
            f"{self.mlflow_url}/api/2.0/mlflow/{path}", params=params, auth=self.mlflow_login(identity), timeout=120
        )
        response.raise_for_status()
        return response.json()

    def aliases(self) -> dict[str, str]:
        model = self.mlflow("registered-models/get", name=GLOBAL_MODEL)["registered_model"]
        return {a["alias"]: a["version"] for a in model.get("aliases", [])}

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
            for p in sorted((self.home / "logs").glob("*.log"))
        )


@contextmanager
def running_stack(home: Path, env: dict[str, str], ports: Mapping[str, int], *up_args: str) -> Iterator[Platform]:
    """`mledge stack up` in ``home``, the test's requests trusting its CA; afterwards `stack down`, and every
    process group it started is gone."""
    stack = Platform(home, env, ports["airflow"], ports["mlflow"])
    stack.ports = dict(ports)
    pids: dict[str, int] = {}
    try:
        up = stack.mledge("stack", "up", *up_args, timeout=900)
        assert up.returncode == 0, f"stack up failed:\n{up.stderr[-3000:]}\n{stack.logs()}"
        pids = json.loads(up.stdout)
        with pytest.MonkeyPatch.context() as trust:
            trust.setenv("REQUESTS_CA_BUNDLE", stack.ca)
            yield stack
    finally:
        down = stack.mledge("stack", "down")
        assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not group_alive(pid), name
        assert not (home / "run" / f"{name}.pid").exists()


def site_owns(site_home: Path, *paths: Path) -> None:
    """Files the test puts in a site's store belong to the site's user, like those its own processes write."""
    owner = site_home.stat()
    for path in paths:
        os.chown(path, owner.st_uid, owner.st_gid)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)  # a folder needs its x bit to be entered


def run_dag(platform: Platform, dag_id: str, conf: dict) -> tuple[str, str, dict[str, str]]:
    """Trigger a DAG as admin and wait for its end: (run id, state, task -> state)."""
    client = platform.airflow()
    client.wait_for_dag(dag_id)
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, conf)
    return (run_id, *finished(platform, dag_id, run_id))


def finished(platform: Platform, dag_id: str, run_id: str) -> tuple[str, dict[str, str]]:
    client = platform.airflow()
    run = client.wait_for_run(dag_id, run_id, timeout=900)
    tasks = {}
    for t in client.task_instances(dag_id, run_id):
        tasks[t["task_id"] + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else "")] = t["state"]
    return run["state"], tasks


def failed_logs(platform: Platform, dag_id: str, run_id: str, tasks: Mapping[str, str], tail: int = 3000) -> str:
    """The end of each failed (or retried, or never finished) task's log: what an assertion message should show."""
    client, out = platform.airflow(), []
    for task, state in tasks.items():
        if state in ("success", "skipped") or "[" in task:
            continue
        try:
            text = client.task_log(dag_id, run_id, task)
        except Exception as exc:  # the log itself may be what is missing
            text = f"(no log: {exc})"
        out.append(f"--- {task} ({state}) ---\n{text[-tail:]}")
    return "\n".join(out)


def training_xcom(platform: Platform, run_id: str, state: str, tasks: dict[str, str]) -> dict:
    assert state == "success", f"{run_id}: {tasks}\n{platform.logs()}"
    client = platform.airflow()
    return {task: client.xcom(DAG_ID, run_id, task) for task in tasks}


def run_training(platform: Platform, conf: dict) -> tuple[str, dict]:
    run_id, state, tasks = run_dag(platform, DAG_ID, conf)
    return run_id, training_xcom(platform, run_id, state, tasks)


def site_aliases(platform: Platform, site: str) -> dict[str, str]:
    model = platform.mlflow("registered-models/get", name=f"{site}-axis_failures-federated")["registered_model"]
    return {a["alias"]: a["version"] for a in model.get("aliases", [])}


def drift_alerts(platform: Platform) -> list[dict]:
    done = platform.mledge("drift", "alerts", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def known_secrets(home: Path) -> dict[str, str]:
    """Every secret the stack generated, by where it is kept: values of at least 8 characters."""
    found: dict[str, str] = {}
    for path in sorted((home / "platform" / "secrets").rglob("*")):
        if not path.is_file() or path.suffix in (".pem", ".crt", ".pub"):
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".json":
            def walk(value, where):
                if isinstance(value, dict):
                    for k, v in value.items():
                        walk(v, f"{where}:{k}")
                elif isinstance(value, str) and len(value) >= 8:
                    found[where] = value
            walk(json.loads(text), path.name)
        else:
            for line in text.splitlines():
                key, _, value = line.partition("=")
                if len(value.strip()) >= 8:
                    found[f"{path.name}:{key.strip()}"] = value.strip()
    return found
