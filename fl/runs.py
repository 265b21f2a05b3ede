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

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

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


# Reads of the SuperLink are retried with backoff (a restarting SuperLink answers again within seconds); a
# submission is not: ensure_run makes it safe to repeat.
_read_retry = retry(
    retry=retry_if_exception_type(FlowerError), stop=stop_after_attempt(5), wait=wait_exponential(max=15), reraise=True
)


def read(args: list[str], flwr_bin: str = "flwr", timeout: float = 60.0) -> dict:
    return _read_retry(flwr)(args, flwr_bin, timeout)


def online_nodes(connection: str, flwr_bin: str = "flwr") -> list[dict]:
    nodes = read(["supernode", "ls", connection], flwr_bin)["nodes"]
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
    runs = read(["ls", "--run-id", str(run_id), connection], flwr_bin)["runs"]
    if not runs:
        raise FlowerError(f"the SuperLink knows no run {run_id}")
    return runs[0]


def recent_runs(connection: str, flwr_bin: str = "flwr", limit: int = 5) -> list[dict]:
    runs = read(["ls", connection], flwr_bin)["runs"]
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


# --- one Flower run per DAG run, whatever is retried ------------------------------------------------------------

FAILED = ("finished:failed", "finished:stopped")


class RunLedger:
    """Which Flower runs a DAG run started, kept at the platform (``<platform home>/flower/dag_runs/``).

    An attempt is recorded before it is submitted, so a task that dies between submitting and recording is
    recognised by its retry (see ``ensure_run``).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, dag_run_id: str) -> Path:
        return self.folder / f"{dag_run_id.replace('/', '_')}.json"

    def get(self, dag_run_id: str) -> dict:
        path = self._path(dag_run_id)
        return json.loads(path.read_text()) if path.exists() else {"dag_run_id": dag_run_id, "attempts": []}

    def put(self, record: dict) -> None:
        from mledge.security.files import write_private

        self.folder.mkdir(parents=True, exist_ok=True)
        write_private(self._path(record["dag_run_id"]), json.dumps(record, indent=1))


def _adopt(connection: str, flwr_bin: str, since: float, known: set[str]) -> str | None:
    """The run an interrupted attempt submitted: the one new run pending since ``since`` (seconds since epoch)."""
    from datetime import datetime

    fresh = []
    for run in recent_runs(connection, flwr_bin, limit=20):
        try:
            pending = datetime.fromisoformat(str(run.get("pending-at"))).timestamp()
        except ValueError:
            continue
        if pending >= since - 5 and str(run["run-id"]) not in known:
            fresh.append(str(run["run-id"]))
    return fresh[0] if len(fresh) == 1 else None


def ensure_run(
    run_config: Mapping[str, object],
    connection: str,
    dag_run_id: str,
    ledger: RunLedger,
    flwr_bin: str = "flwr",
    max_attempts: int = 3,
    clock: Callable[[], float] = time.time,
) -> tuple[str, bool]:
    """The Flower run of this DAG run: (run id, reused). A live or completed run is reused; one that failed or was
    stopped is followed by a new attempt, at most ``max_attempts`` in all; an attempt whose submission was
    interrupted before its id was recorded is adopted when exactly one new run appeared since."""
    record = ledger.get(dag_run_id)
    attempts = record["attempts"]
    if attempts:
        last = attempts[-1]
        if last["run_id"] is None:
            last["run_id"] = _adopt(connection, flwr_bin, last["submitted_at"], {a["run_id"] for a in attempts})
            ledger.put(record)
        if last["run_id"] is not None:
            try:
                status = run_info(last["run_id"], connection, flwr_bin)["status"]
            except FlowerError as exc:
                if "knows no run" not in str(exc):
                    raise
                status = "unknown"  # a SuperLink that lost its database: the run is gone
            if status not in (*FAILED, "unknown"):
                return last["run_id"], True
    if len(attempts) >= max_attempts:
        raise FlowerError(f"DAG run {dag_run_id}: gave up after {len(attempts)} Flower runs ({attempts})")
    attempt = {"run_id": None, "submitted_at": clock(), "config": dict(run_config)}
    attempts.append(attempt)
    ledger.put(record)
    attempt["run_id"] = submit_run(run_config, connection, flwr_bin=flwr_bin)
    ledger.put(record)
    return attempt["run_id"], False
