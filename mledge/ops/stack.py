"""The local stack: start, check and stop MLEDGE's real components as separate processes on 127.0.0.1.

Components: the MLflow tracking server, a Flower SuperLink (with ``--database``, TLS from the local CA of
``mledge.pki`` and ``--enable-supernode-auth``), one Flower SuperNode per site (verifying that CA, signing with the
site's key from ``mledge.node_keys``), and Airflow's api-server, scheduler and dag-processor. Each runs in its own
process group; its PID is kept in ``$MLEDGE_HOME/run/<name>.pid`` and its output in
``$MLEDGE_HOME/logs/<name>.log``. Stopping signals exactly those process groups, so nothing a component started
(gunicorn workers, ClientApp processes) is left behind.

Standard library at import time (TLS and node keys import ``cryptography`` inside functions): the orchestrator
environment and a container can run it as well.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mledge.contracts import FLWR_CONNECTION
from mledge.ops.settings import Settings, mlflow_server_config
from mledge.security.files import locked, private_dir, write_private


class StackError(RuntimeError):
    """A component did not start or is not healthy; the message says which and shows its log's end."""


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    extra: dict = field(default_factory=dict)


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


def _port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    return check


def _airflow_healthy(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3) as response:
                health = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    return check


def ensure_secret_env(settings: Settings) -> dict[str, str]:
    """Secrets generated on first start, kept in $MLEDGE_HOME/secrets (mode 0600), never in git or code."""
    path = private_dir(settings.secrets) / "airflow.env"
    with locked(settings.secrets / ".airflow.lock"):
        if not path.exists():
            write_private(
                path,
                f"AIRFLOW__API_AUTH__JWT_SECRET={secrets.token_urlsafe(48)}\n"
                f"AIRFLOW__API__SECRET_KEY={secrets.token_urlsafe(48)}\n",
            )
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def airflow_passwords_file(settings: Settings) -> Path:
    return settings.secrets / "airflow_passwords.json"


AIRFLOW_USERS = {"admin": "admin", "viewer": "viewer"}  # user -> SimpleAuthManager role


def ensure_airflow_passwords(settings: Settings) -> Path:
    """Generate the Airflow users' passwords ourselves, before the api-server's first start.

    SimpleAuthManager generates missing ones itself but also prints them to its log; with every user already in
    the file it prints nothing.
    """
    path = airflow_passwords_file(settings)
    private_dir(settings.secrets)
    with locked(settings.secrets / ".airflow.lock"):
        known = json.loads(path.read_text() or "{}") if path.exists() else {}
        missing = [user for user in AIRFLOW_USERS if user not in known]
        if missing:
            known.update({user: secrets.token_urlsafe(18) for user in missing})
            write_private(path, json.dumps(known) + "\n")
    return path


def workload_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{settings.bin('workload', '')}{os.pathsep}{env.get('PATH', '')}",
        MLEDGE_HOME=str(settings.home),
        MLFLOW_TRACKING_URI=settings.mlflow_uri,
        FLWR_HOME=str(settings.flwr_home),
        MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
    )
    return env


def airflow_env(settings: Settings) -> dict[str, str]:
    from mledge.security import mlflow_auth

    env = workload_env(settings)
    db_url = settings.airflow_db_url or f"sqlite:///{settings.airflow_home / 'airflow.db'}"
    env.update(ensure_secret_env(settings))
    env.update(
        PATH=f"{settings.bin('orchestrator', '')}{os.pathsep}{os.environ.get('PATH', '')}",
        AIRFLOW_HOME=str(settings.airflow_home),
        AIRFLOW__CORE__DAGS_FOLDER=str(settings.repo / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="4",  # each slot is a worker process; 4 is plenty on two cores
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=db_url,
        AIRFLOW__API__HOST=settings.bind_host,
        AIRFLOW__API__PORT=str(settings.airflow_port),
        AIRFLOW__API__BASE_URL=settings.airflow_url,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{settings.airflow_url}/execution/",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=",".join(f"{u}:{r}" for u, r in AIRFLOW_USERS.items()),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(ensure_airflow_passwords(settings)),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="30",
        MLEDGE_BIN=str(settings.bin("workload", "mledge")),
    )
    # Airflow tasks act on MLflow as the platform identity (MLFLOW_TRACKING_USERNAME/PASSWORD).
    env.update(mlflow_auth.client_env(settings, "platform"))
    return env


def write_flwr_config(settings: Settings) -> None:
    """The `flwr` CLI's connection to our SuperLink ($FLWR_HOME/config.toml), verifying the local CA."""
    from mledge.security import pki

    settings.flwr_home.mkdir(parents=True, exist_ok=True)
    (settings.flwr_home / "config.toml").write_text(
        pki.flwr_connection_toml(FLWR_CONNECTION, settings.superlink_address, pki.tls_files(settings.secrets))
    )


def supernode_registry(settings: Settings) -> Path:
    """node id -> site of the registered SuperNode keys; beside the SuperLink database it describes."""
    return settings.home / "flower" / "supernodes.json"


def superlink_hostnames() -> list[str]:
    """Names besides 127.0.0.1/localhost the SuperLink certificate must carry (e.g. the compose service)."""
    return [n.strip() for n in os.environ.get("MLEDGE_SUPERLINK_HOSTNAMES", "").split(",") if n.strip()]


def _supernode_healthy(settings: Settings, site: str, port: int) -> Callable[[], bool]:
    """Healthy once the SuperLink accepted it: a refused SuperNode opens its port too, then exits (code 305)."""
    from mledge.security.node_keys import supernode_activated

    port_open = _port_open(port)

    def check() -> bool:
        path = settings.logs / f"supernode-{site}.log"
        return port_open() and path.exists() and supernode_activated(path.read_text(errors="replace")) is not None

    return check


def components(settings: Settings) -> list[Component]:
    from mledge.security import mlflow_auth, node_keys, pki

    tls = pki.tls_files(settings.secrets)  # paths only: `up` creates the files before anything starts
    wl = workload_env(settings)
    af = airflow_env(settings)
    # The ServerApp runs in the SuperLink's environment and logs to MLflow as the platform identity; the
    # SuperNodes (sites) get no MLflow credentials: their ClientApps never call MLflow.
    superlink_env = {**wl, **mlflow_auth.client_env(settings, "platform")}
    server = mlflow_server_config(settings.repo)["server"]
    # Basic-auth: generated config and Flask key (0600, under $MLEDGE_HOME/secrets), inherited auth variables dropped.
    mlflow_env = mlflow_auth.auth_server_env(
        settings, {**wl, **mlflow_server_config(settings.repo).get("environment", {})}
    )

    def under_home(value: str) -> str:
        return value if "://" in value else str(settings.home / value)

    backend = os.environ.get("MLEDGE_MLFLOW_BACKEND_STORE_URI") or under_home(server["backend_store"])
    found = [
        Component(
            "mlflow",
            [
                str(settings.bin("workload", "mlflow")), "server", *mlflow_auth.auth_server_args(settings),
                "--backend-store-uri", backend if "://" in backend else f"sqlite:///{backend}",
                "--artifacts-destination", under_home(server["artifacts_destination"]),
                "--host", settings.bind_host, "--port", str(settings.mlflow_port),
                "--workers", str(server["workers"]),
            ],
            mlflow_env,
            _http_ok(f"{settings.mlflow_uri}/health"),
            stop_signal=signal.SIGINT,  # SIGINT shuts gunicorn/uvicorn down cleanly
        ),
        Component(
            "superlink",
            [
                str(settings.bin("workload", "flower-superlink")),
                *pki.superlink_tls_args(tls),
                *node_keys.superlink_auth_args(),
                "--disable-runtime-dependency-installation",
                "--database", str(settings.home / "flower" / "superlink.db"),
                "--host", settings.bind_host, "--port", str(settings.superlink_port),
            ],
            superlink_env,
            _port_open(settings.superlink_port),
        ),
    ]
    for i, site in enumerate(settings.sites):
        port = settings.supernode_port + i
        found.append(
            Component(
                f"supernode-{site}",
                [
                    str(settings.bin("workload", "flower-supernode")),
                    *pki.supernode_tls_args(tls),
                    *node_keys.supernode_auth_args(node_keys.private_key_path(settings.site_store(site))),
                    "--superlink", settings.superlink_address,
                    "--node-config", f"site='{site}' data-dir='{settings.site_store(site)}'",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                wl,
                _supernode_healthy(settings, site, port),
            )
        )
    airflow = str(settings.bin("orchestrator", "airflow"))
    found += [
        Component(
            "airflow-api-server",
            [airflow, "api-server", "--host", settings.bind_host, "--port", str(settings.airflow_port)],
            af,
            _http_ok(f"{settings.airflow_url}/api/v2/version"),
        ),
        Component("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], af, lambda: True),
        Component("airflow-dag-processor", [airflow, "dag-processor"], af, lambda: True),
        Component("airflow-triggerer", [airflow, "triggerer"], af, lambda: True),
    ]
    return found


# --- processes -------------------------------------------------------------------------------------------


def _pidfile(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def running_pid(settings: Settings, name: str) -> int | None:
    path = _pidfile(settings, name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid and _alive(pid) else None


def log_tail(settings: Settings, name: str, lines: int = 25) -> str:
    path = settings.logs / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def start(settings: Settings, component: Component) -> tuple[int, bool]:
    """Start a component unless it already runs; returns (pid, started_now)."""
    pid = running_pid(settings, component.name)
    if pid:
        return pid, False
    settings.logs.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.logs / f"{component.name}.log", "ab") as log:
        process = subprocess.Popen(
            component.argv,
            env=component.env,
            cwd=component.cwd or settings.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole, by this PID
        )
    _pidfile(settings, component.name).write_text(str(process.pid))
    return process.pid, True


def wait_healthy(settings: Settings, wanted: list[Component], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(wanted)
    while pending:
        for component in list(pending):
            if not running_pid(settings, component.name):
                raise StackError(
                    f"{component.name} exited during start-up{_refusal(settings, component.name)}; end of "
                    f"{settings.logs}/{component.name}.log:\n" + log_tail(settings, component.name)
                )
            if component.healthy():
                pending.remove(component)
        if pending and time.monotonic() > deadline:
            names = ", ".join(c.name for c in pending)
            raise StackError(
                f"not healthy within {timeout:.0f}s: {names}; end of its log:\n" + log_tail(settings, pending[0].name)
            )
        if pending:
            time.sleep(0.5)


def _refusal(settings: Settings, name: str) -> str:
    """For a SuperNode the SuperLink refused: why, in one clause."""
    from mledge.security.node_keys import supernode_refusal

    path = settings.logs / f"{name}.log"
    if not name.startswith("supernode-") or not path.exists():
        return ""
    refusal = supernode_refusal(path.read_text(errors="replace"))
    return f": {refusal}" if refusal else ""


def stop(settings: Settings, name: str, sig: int = signal.SIGTERM, grace: float = 20.0) -> bool:
    """Stop a component's process group by its recorded PID; returns whether it was running."""
    path = _pidfile(settings, name)
    pid = running_pid(settings, name)
    if pid:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
    path.unlink(missing_ok=True)
    return pid is not None


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process remains in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(_alive(p) for p in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: process group
            members.append(int(stat.parent.name))
    return members


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- the whole stack --------------------------------------------------------------------------------------


def init_site_data(settings: Settings, batches: int) -> dict:
    """Give every site at least ``batches`` batches in its own store (existing batches are kept)."""
    from mledge.onsite.profiles import site_profile
    from mledge.onsite.store import ensure_batches

    added = {}
    for site in settings.sites:
        new = ensure_batches(settings.site_store(site), site_profile(site), batches)
        if new:
            added[site] = [str(p) for p in new]
    return {"data_root": str(settings.data_root), "added": added}


def migrate_airflow(settings: Settings) -> None:
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(settings.bin("orchestrator", "airflow")), "db", "migrate"],
        env=airflow_env(settings),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


def up(settings: Settings, timeout: float = 180.0, say: Callable[[str], None] = print) -> dict[str, int]:
    """Start every component that is not running and wait until all are healthy.

    Order: the local CA and each site's key pair exist; MLflow and the SuperLink start and are healthy; MLflow's
    users and permission matrix (mlflow/permissions.toml) are applied; each site's public key is registered with
    the SuperLink; then the SuperNodes and Airflow start.
    """
    from mledge.security import mlflow_auth, node_keys, pki

    for path in (settings.home / "flower", settings.home / "mlflow", settings.data_root):
        path.mkdir(parents=True, exist_ok=True)
    pki.ensure_tls(settings.secrets, hostnames=superlink_hostnames())
    write_flwr_config(settings)
    # Each site makes its own key where it runs; in the local stack all sites run here.
    keys = {site: node_keys.ensure_node_key(site, settings.site_store(site)) for site in settings.sites}
    every = components(settings)
    if not running_pid(settings, "airflow-api-server"):
        say("migrating the Airflow metadata database")
        migrate_airflow(settings)
    pids = {}

    def launch(group: list[Component]) -> None:
        for component in group:
            pid, started = start(settings, component)
            pids[component.name] = pid
            say(f"{'started' if started else 'running'} {component.name} (pid {pid})")
        wait_healthy(settings, group, timeout)

    from mledge.db import migrate

    say(f"platform database at revision {migrate(settings.platform_db_url)}")
    first = [c for c in every if c.name in ("mlflow", "superlink")]
    launch(first)
    # Before anything logs to MLflow: users, the experiments and registered models (made by `platform`), grants.
    applied = mlflow_auth.apply_permissions(settings)
    if applied["changed"]:
        say(f"applied {applied['matrix']} to MLflow: users created {applied['users_created']}, resources created "
            f"{len(applied['resources_created'])}, grants {len(applied['granted'])} given, "
            f"{len(applied['revoked'])} revoked")
    os.environ.setdefault("FLWR_HOME", str(settings.flwr_home))  # the `flwr` CLI below reads its connection there
    for node in node_keys.ensure_registered(
        {site: key.public_key for site, key in keys.items()},
        FLWR_CONNECTION,
        supernode_registry(settings),
        str(settings.bin("workload", "flwr")),
    ):
        say(f"{'registered' if node.newly_registered else 'known'} SuperNode key of {node.site} "
            f"({node.fingerprint}, node {node.node_id})")
    launch([c for c in every if c not in first])
    _wait_airflow(settings, timeout)
    return pids


def _wait_airflow(settings: Settings, timeout: float) -> None:
    check = _airflow_healthy(settings.airflow_url)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise StackError(
                f"Airflow's scheduler and dag-processor did not report healthy within {timeout:.0f}s; see "
                f"{settings.logs}/airflow-scheduler.log and airflow-dag-processor.log"
            )
        time.sleep(1)


def down(settings: Settings, say: Callable[[str], None] = print) -> list[str]:
    """Stop every component this stack started, Airflow first (it drives the rest)."""
    stopped = []
    for component in reversed(components(settings)):
        if stop(settings, component.name, component.stop_signal):
            stopped.append(component.name)
            say(f"stopped {component.name}")
    return stopped


def status(settings: Settings) -> dict[str, dict]:
    return {
        c.name: {"pid": (pid := running_pid(settings, c.name)), "healthy": bool(pid) and c.healthy()}
        for c in components(settings)
    }


# --- one component in the foreground (containers) ---------------------------------------------------------


class ServeError(StackError):
    """A component cannot be served as asked; the message names it and what is wrong."""


def required_flags(required: list[str]) -> list[tuple[str, str | None]]:
    """``--flag value --switch`` -> [("--flag", "value"), ("--switch", None)]."""
    pairs: list[tuple[str, str | None]] = []
    for token in required:
        if token.startswith("--"):
            pairs.append((token, None))
        elif pairs and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], token)
        else:
            raise ServeError(f"required argument {token!r} follows no --flag")
    return pairs


def check_argv(component: Component, required: list[str]) -> None:
    """Refuse a command line without a required flag (or with another value), or with --insecure."""
    argv = component.argv
    if "--insecure" in argv:
        raise ServeError(f"{component.name}: the stack's command line has --insecure; TLS cannot be turned off")
    for flag, value in required_flags(required):
        if flag not in argv:
            raise ServeError(f"{component.name}: the stack's command line lacks {flag}, which the deployment requires")
        actual = argv[argv.index(flag) + 1] if argv.index(flag) + 1 < len(argv) else None
        if value is not None and actual != value:
            raise ServeError(f"{component.name}: {flag} is {actual!r} in the stack's command line, not {value!r}")


def serve(settings: Settings, name: str, required: list[str]) -> None:
    """Become one component (exec): its argv and environment as `up` builds them, the process environment winning."""
    for path in (settings.home / "flower", settings.home / "mlflow", settings.data_root, settings.logs):
        path.mkdir(parents=True, exist_ok=True)
    write_flwr_config(settings)
    found = {c.name: c for c in components(settings)}
    if name not in found:
        raise ServeError(f"no component {name!r}; components: {', '.join(found)}")
    component = found[name]
    check_argv(component, required)
    env = {**component.env, **os.environ}
    os.chdir(component.cwd or settings.home)
    os.execvpe(component.argv[0], component.argv, env)
