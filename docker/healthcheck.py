#!/usr/bin/env python3
"""Health checks of MLEDGE's containers (the images' HEALTHCHECK and docker-compose.yml's ``healthcheck``).

    healthcheck.py component NAME   the check of a component, its port from mledge.ops.settings (as the local stack);
                                    an edge worker: `airflow edge status` says it serves (starting, running or idle);
                                    a trainer: its socket in the site's home answers, warmed up
    healthcheck.py auto             the component docker/entrypoint.sh recorded; none (a one-shot job): healthy
    healthcheck.py tcp HOST:PORT    something accepts TCP connections there
    healthcheck.py http URL         GET answers 200

Exit status 0 when healthy, 1 otherwise, with one line saying what was checked. Standard library only (plus
``mledge.ops.settings`` and ``mledge.onsite.trainer_client``, themselves standard library at import), so every
image's interpreter can run it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

COMPONENT_FILE = os.environ.get("MLEDGE_COMPONENT_FILE", "/tmp/mledge-component")
TIMEOUT_S = 5.0
# Edge worker states (apache-airflow-providers-edge3) in which a worker serves its queue (as mledge.ops.status).
EDGE_SERVING = ("starting", "running", "idle")
# Airflow's scheduler serves /health here when [scheduler] enable_health_check is on (docker-compose.yml sets it).
SCHEDULER_HEALTH_PORT = int(os.environ.get("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT") or 8974)


def tcp(address: str) -> tuple[bool, str]:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=TIMEOUT_S):
            return True, f"tcp {address}: accepting connections"
    except (OSError, ValueError) as exc:
        return False, f"tcp {address}: {exc}"


def http(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status == 200, f"GET {url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"GET {url}: {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"GET {url}: {exc}"


def airflow_job(job_type: str) -> tuple[bool, str]:
    """A live heartbeat of this host's job of that type in Airflow's metadata database."""
    done = subprocess.run(
        ["airflow", "jobs", "check", "--job-type", job_type, "--local"],
        capture_output=True, text=True, timeout=40, check=False,
    )
    last = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()[-1]
    return done.returncode == 0, f"airflow jobs check {job_type}: {last}"


def edge_worker() -> tuple[bool, str]:
    """The edge worker of this container (its pid file in AIRFLOW_HOME) reports a state in which it serves."""
    try:
        done = subprocess.run(
            ["airflow", "edge", "status"], capture_output=True, text=True, timeout=40, check=False,
        )
    except OSError as exc:  # no Airflow in this image
        return False, f"airflow edge status: {exc}"
    start = done.stdout.find("{")
    try:
        # The status document (log lines may come before or after it).
        found = json.JSONDecoder().raw_decode(done.stdout, start)[0] if done.returncode == 0 and start >= 0 else {}
        state = found.get("state")
    except (ValueError, AttributeError):
        state = None
    if state is None:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return False, f"airflow edge status: exit {done.returncode}: {last}"
    return state in EDGE_SERVING, f"airflow edge status: {state}"


def trainer(home: str, site: str) -> tuple[bool, str]:
    """The site's trainer answers on its socket and has warmed up."""
    from mledge.onsite.trainer_client import TrainerFailed, TrainerUnavailable, socket_path, status

    path = socket_path(home)
    try:
        found = status(path, site=site, timeout=TIMEOUT_S)
    except (TrainerUnavailable, TrainerFailed) as exc:
        return False, f"trainer {path}: {exc}"
    return bool(found.get("ready")), f"trainer {path}: {'ready' if found.get('ready') else 'warming up'}"


def component_check(name: str) -> Callable[[], tuple[bool, str]]:
    """The check of one component, on the ports mledge.ops.settings gives the local stack."""
    from mledge.ops.settings import Settings

    settings = Settings()
    if name == "superlink":
        return lambda: tcp(f"127.0.0.1:{settings.superlink_port}")
    if name == "gateway-fleet":
        return lambda: tcp(f"127.0.0.1:{settings.fleet_port}")
    if name == "gateway-edge":
        return lambda: tcp(f"127.0.0.1:{settings.edge_port}")
    if name.startswith(("supernode-", "edge-worker-", "trainer-")):
        site = name.removeprefix("supernode-").removeprefix("edge-worker-").removeprefix("trainer-")
        if site not in settings.sites:
            raise ValueError(f"unknown site {site!r} in component {name!r}; sites: {', '.join(settings.sites)}")
        if name.startswith("edge-worker-"):
            return edge_worker
        if name.startswith("trainer-"):
            return lambda: trainer(settings.site_home(site), site)
        # The SuperNode's own runtime API, on loopback only: a SuperNode accepts no connection from outside.
        return lambda: tcp(f"127.0.0.1:{settings.supernode_port + settings.sites.index(site)}")
    if name == "mlflow":
        return lambda: http(f"http://127.0.0.1:{settings.mlflow_port}/health")
    if name == "airflow-api-server":
        return lambda: http(f"http://127.0.0.1:{settings.airflow_port}/api/v2/version")
    if name == "airflow-scheduler":
        return lambda: http(f"http://127.0.0.1:{SCHEDULER_HEALTH_PORT}/health")
    if name == "airflow-dag-processor":
        return lambda: airflow_job("DagProcessorJob")
    if name == "airflow-triggerer":
        return lambda: airflow_job("TriggererJob")
    raise ValueError(f"no health check for component {name!r}")


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in {"component", "auto", "tcp", "http"}:
        print(__doc__, file=sys.stderr)
        return 2
    mode, args = argv[0], argv[1:]
    try:
        if mode == "auto":
            try:
                with open(COMPONENT_FILE) as recorded:
                    name = recorded.read().strip()
            except FileNotFoundError:
                print("no long-running component recorded: nothing to check")
                return 0
            check = component_check(name)
        elif mode == "component":
            check = component_check(args[0])
        elif mode == "tcp":
            check = lambda: tcp(args[0])  # noqa: E731
        else:
            check = lambda: http(args[0])  # noqa: E731
        healthy, what = check()
    except (IndexError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1
    print(what)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
