"""Talking to the SuperLink: connected nodes, submitting a run, awaiting its terminal status.

Flower has no public Python API to submit or await a run, so this drives the ``flwr`` CLI with ``--format json``
(the connection lives in ``$FLWR_HOME/config.toml``). The exit code of ``flwr run --stream`` says nothing about
the run's outcome: the run's status (``finished:completed|failed|stopped``) does.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

FLOWER_APP = Path(__file__).parent / "flower_app"
TERMINAL_PREFIX = "finished:"
COMPLETED = "finished:completed"


class FlowerError(RuntimeError):
    """The SuperLink refused or failed something; the message carries Flower's own words."""


def flwr(args: list[str], flwr_bin: str = "flwr", timeout: float = 60.0) -> dict:
    """Run one ``flwr`` command with JSON output and return the parsed document."""
    argv = [flwr_bin, *args, "--format", "json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise FlowerError(f"`{' '.join(argv)}` did not answer within {timeout:.0f}s") from exc
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise FlowerError(
            f"`{' '.join(argv)}` exited {done.returncode} without JSON: {(done.stdout + done.stderr)[-800:]}"
        ) from None
    if done.returncode != 0 or not document.get("success", False):
        raise FlowerError(f"`{' '.join(argv)}` failed: {document.get('error-message') or document}")
    return document


def online_nodes(connection: str, flwr_bin: str = "flwr") -> list[dict]:
    nodes = flwr(["supernode", "ls", connection], flwr_bin)["nodes"]
    return [n for n in nodes if n.get("status") == "online"]


def wait_for_nodes(
    min_nodes: int,
    timeout: float,
    connection: str,
    flwr_bin: str = "flwr",
    poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict]:
    """Block until ``min_nodes`` SuperNodes are online, or fail after ``timeout`` seconds saying how many were."""
    deadline = clock() + timeout
    while True:
        nodes = online_nodes(connection, flwr_bin)
        if len(nodes) >= min_nodes:
            return nodes
        if clock() >= deadline:
            raise TimeoutError(
                f"only {len(nodes)} of the {min_nodes} required SuperNodes connected to the SuperLink within "
                f"{timeout:.0f}s (online node ids: {[n['node-id'] for n in nodes]}); start the missing sites' "
                "SuperNodes or lower min_clients"
            )
        time.sleep(poll_s)


def run_config_arg(values: Mapping[str, object]) -> str:
    """``--run-config`` syntax: space-separated TOML key=value pairs; refuses what Flower's parser cannot read."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"run config {key}={value}: not a finite number")
        if isinstance(value, str) and ('"' in value or not value.isprintable()):
            raise ValueError(f"run config {key}={value!r}: quotes and control characters are not allowed")
        if not isinstance(value, bool | int | float | str):
            raise ValueError(f"run config {key}={value!r}: only numbers, booleans and strings")
        pairs.append(f"{key}={json.dumps(value, ensure_ascii=False)}")
    return " ".join(pairs)


def submit_run(
    run_config: Mapping[str, object], connection: str, app_dir: Path = FLOWER_APP, flwr_bin: str = "flwr"
) -> str:
    args = ["run", str(app_dir), connection]
    if run_config:
        args += ["--run-config", run_config_arg(run_config)]
    return str(flwr(args, flwr_bin, timeout=120)["run-id"])


def run_info(run_id: str, connection: str, flwr_bin: str = "flwr") -> dict:
    runs = flwr(["ls", "--run-id", str(run_id), connection], flwr_bin)["runs"]
    if not runs:
        raise FlowerError(f"the SuperLink knows no run {run_id}")
    return runs[0]


def recent_runs(connection: str, flwr_bin: str = "flwr", limit: int = 5) -> list[dict]:
    runs = flwr(["ls", connection], flwr_bin)["runs"]
    return sorted(runs, key=lambda r: r.get("pending-at", ""), reverse=True)[:limit]


def await_run(
    run_id: str,
    timeout: float,
    connection: str,
    flwr_bin: str = "flwr",
    poll_s: float = 5.0,  # each poll starts the `flwr` CLI (about 1.5 s of CPU): not too often
    on_change: Callable[[dict], None] = lambda info: None,
) -> dict:
    """Poll a run until its status is terminal; on timeout stop it and fail. Returns the final run info."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        info = run_info(run_id, connection, flwr_bin)
        if info["status"] != last:
            last = info["status"]
            on_change(info)
        if info["status"].startswith(TERMINAL_PREFIX):
            return info
        if time.monotonic() >= deadline:
            flwr(["stop", str(run_id), connection], flwr_bin)
            raise TimeoutError(f"Flower run {run_id} was still {info['status']} after {timeout:.0f}s; stopped it")
        time.sleep(poll_s)
