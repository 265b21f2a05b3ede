"""The hook to the workload environment: run ``mledge <arguments>`` and return the JSON document it prints.

Airflow and the workload (Flower, torch, MLflow) live in separate Python environments. Every task reaches the
workload through one command, ``mledge``, the same program a container runs in docker-compose or Kubernetes.

The program is found through the ``MLEDGE_BIN`` environment variable (the local stack sets it to the workload
venv's ``mledge``), else ``mledge`` on PATH (containers). It is always asked for JSON (the global ``--json``):
``mledge`` prints tables for people at a terminal, and a task must never depend on how its stdout is attached.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseHook


class MledgeCommandError(RuntimeError):
    """The workload command failed; the message carries its exit code and the end of what it said."""


# The global flag that makes ``mledge`` print its result as JSON (mledge.cli.output), before the command.
JSON_FLAG = "--json"


class MledgeHook(BaseHook):
    """Runs ``mledge --json <arguments>`` in the workload environment and parses its JSON output."""

    def __init__(self, executable: str | None = None) -> None:
        super().__init__()
        self.executable = executable or os.environ.get("MLEDGE_BIN") or shutil.which("mledge") or "mledge"
        self._process: subprocess.Popen[str] | None = None

    def run(self, arguments: Sequence[str], env: Mapping[str, str] | None = None) -> Any:
        """Run the command; ``env`` adds variables (credentials from a Connection) to this process only."""
        argv = [self.executable, JSON_FLAG, *map(str, arguments)]
        self.log.info("Running %s", " ".join(argv))  # never the environment: it may carry credentials
        self._process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        stdout: list[str] = []
        reader = threading.Thread(target=lambda: stdout.extend(self._process.stdout), daemon=True)
        reader.start()
        tail: deque[str] = deque(maxlen=20)
        for line in self._process.stderr:  # the workload's log, live in the task log
            line = line.rstrip()
            tail.append(line)
            self.log.info("%s", line)
        code = self._process.wait()
        reader.join()
        if code != 0:
            raise MledgeCommandError(
                f"mledge {' '.join(map(str, arguments))} exited with {code}: " + " | ".join(tail)
            )
        text = "".join(stdout).strip()
        return json.loads(text) if text else None

    def kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
