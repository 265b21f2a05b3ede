"""A small client of Airflow 3's REST API (v2): log in, unpause, trigger, follow a DAG run, read its results.

It does what a person does in the UI, through the same API the UI uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests

TERMINAL_STATES = {"success", "failed"}


class AirflowApiError(RuntimeError):
    pass


def password_for(passwords_file: Path, username: str) -> str:
    """The generated password of a SimpleAuthManager user (written by the api-server on first start)."""
    try:
        return json.loads(passwords_file.read_text())[username]
    except (OSError, KeyError, ValueError) as exc:
        raise AirflowApiError(f"no password for Airflow user {username!r} in {passwords_file}: {exc}") from exc


class AirflowClient:
    def __init__(
        self, base_url: str, username: str, password: str, timeout: float = 30.0, verify: str | bool | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # A CA file (our platform's) or a bool, passed with every request: a session-wide setting would lose to
        # REQUESTS_CA_BUNDLE (requests lets the environment win over Session.verify).
        self.verify = verify
        response = self.session.post(
            f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=timeout,
            **self._verify(),
        )
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"login as {username!r} failed: HTTP {response.status_code} {response.text[:200]}")
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _verify(self) -> dict[str, Any]:
        return {} if self.verify is None else {"verify": self.verify}

    def _call(self, method: str, path: str, prefix: str = "/api/v2", **kwargs: Any) -> Any:
        response = self.session.request(
            method, f"{self.base_url}{prefix}{path}", timeout=self.timeout, **self._verify(), **kwargs
        )
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict:
        """Wait until the dag-processor has parsed the DAG; import errors are reported by name."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=self.timeout, **self._verify())
            if response.status_code == 200:
                return response.json()
            errors = self._call("GET", "/importErrors").get("import_errors", [])
            if errors:
                found = [(e["filename"], e["stack_trace"][-300:]) for e in errors]
                raise AirflowApiError(f"DAG import errors: {found}")
            if time.monotonic() > deadline:
                raise AirflowApiError(f"DAG {dag_id} not parsed within {timeout:.0f}s")
            time.sleep(1)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self._call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, poll_s: float = 2.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise AirflowApiError(f"DAG run {run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(poll_s)

    def runs(self, dag_id: str, **filters: Any) -> list[dict]:
        """The DAG's runs, newest first; ``filters`` are the API's query parameters (e.g. ``run_type``)."""
        params = {"order_by": "-run_after", "limit": 100, **filters}
        return self._call("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def wait_for_new_run(
        self, dag_id: str, known: set[str], timeout: float, poll_s: float = 2.0, **filters: Any
    ) -> str:
        """Wait until a run of the DAG appears that is not in ``known`` (one the scheduler made); its id."""
        deadline = time.monotonic() + timeout
        while True:
            fresh = [r["dag_run_id"] for r in self.runs(dag_id, **filters) if r["dag_run_id"] not in known]
            if fresh:
                return fresh[-1]
            if time.monotonic() > deadline:
                raise AirflowApiError(f"no new run of {dag_id} ({filters}) within {timeout:.0f}s")
            time.sleep(poll_s)

    def clear_failed(self, dag_id: str, run_id: str) -> list[str]:
        """Run a DAG run's failed tasks (and what follows them) again, as the UI's Clear button: the task ids."""
        body = {"dry_run": False, "dag_run_id": run_id, "only_failed": True, "reset_dag_runs": True}
        cleared = self._call("POST", f"/dags/{dag_id}/clearTaskInstances", json=body)
        return sorted({t["task_id"] for t in cleared.get("task_instances", [])})

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        entry = self._call(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index},
        )
        value = entry.get("value")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> str:
        """A task instance's log (its latest try unless ``try_number``), as text."""
        if try_number is None:
            instance = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
            try_number = max(1, int(instance.get("try_number") or 1))
        document = self._call(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"}, headers={"Accept": "application/json"},
        )
        return "\n".join(_log_line(c) for c in document.get("content", []))

    def edge_workers(self) -> list[dict]:
        """The edge workers Airflow knows (name, queues, state, last heartbeat): the Edge provider's UI API."""
        return self._call("GET", "/worker", prefix="/edge_worker/ui")["workers"]


def _log_line(entry: Any) -> str:
    """One structured log entry as text: its event, and for a failure the exception's type and message (Airflow 3
    keeps them in ``error_detail``, beside an event that only says "Task failed with exception")."""
    if not isinstance(entry, dict):
        return str(entry)
    text = str(entry.get("event", ""))
    for error in entry.get("error_detail") or []:
        if isinstance(error, dict):
            text += f"\n{error.get('exc_type', 'Error')}: {error.get('exc_value', '')}"
    return text
