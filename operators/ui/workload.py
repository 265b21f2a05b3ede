"""The pages' only data source: the workload's ``mledge`` command, run through ``MledgeHook`` off the event loop.

A failing command becomes a ``WorkloadError`` whose message names the command and carries its own words, so a
page can show it in an error box instead of a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from typing import Any

from starlette.concurrency import run_in_threadpool

from mledge.contracts import REVIEW_ACTIONS
from operators.hooks.mledge import MledgeCommandError, MledgeHook


class WorkloadError(RuntimeError):
    """A ``mledge`` command failed or printed something other than the documented JSON."""

    def __init__(self, command: str, problem: str) -> None:
        super().__init__(f"{command}: {problem}")
        self.command = command
        self.problem = problem


def _command(arguments: Sequence[str]) -> str:
    return "mledge " + " ".join(map(str, arguments))


def _run(arguments: Sequence[str]) -> Any:
    hook = MledgeHook()
    command = _command(arguments)
    try:
        return hook.run(arguments)
    except MledgeCommandError as exc:
        raise WorkloadError(command, str(exc).removeprefix(command).strip()) from exc
    except OSError as exc:  # the program itself is missing or not executable
        raise WorkloadError(command, f"cannot run {hook.executable!r} (set MLEDGE_BIN): {exc}") from exc
    except json.JSONDecodeError as exc:
        raise WorkloadError(command, f"printed no valid JSON ({exc})") from exc


async def run(arguments: Sequence[str]) -> Any:
    """Run ``mledge <arguments>`` in a worker thread; the api-server's event loop never waits on it."""
    return await run_in_threadpool(_run, list(arguments))


def _expect(command: Sequence[str], value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise WorkloadError(_command(command), f"expected {what}, got {type(value).__name__}")
    return value


async def drift_alerts() -> list[dict]:
    """``mledge drift alerts --json``: every drift alert, newest first as the command orders them."""
    command = ["drift", "alerts", "--json"]
    alerts = _expect(command, await run(command), list, "a JSON list of alerts")
    for position, alert in enumerate(alerts):
        if not isinstance(alert, dict) or "id" not in alert or "status" not in alert:
            raise WorkloadError(_command(command), f"item {position} is not an alert with 'id' and 'status'")
    return alerts


async def review_alert(alert_id: int, action: str, user: str) -> dict:
    """``mledge drift review``: records the decision with the user's name and returns the updated alert."""
    if action not in REVIEW_ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(REVIEW_ACTIONS)}")
    command = ["drift", "review", "--alert-id", str(alert_id), "--action", action, "--user", user]
    return _expect(command, await run(command), dict, "the updated alert as a JSON object")


async def costs_report(project: str, start: date, end: date, *, chart: bool = True) -> dict:
    """``mledge costs report ... --json [--chart-svg]``: totals by provider, service, day and project, and a chart.

    ``end`` is exclusive, as everywhere in the cost layer.
    """
    command = [
        "costs", "report", "--project", project, "--from", start.isoformat(), "--to", end.isoformat(), "--json",
    ]
    if chart:
        command.append("--chart-svg")
    return _expect(command, await run(command), dict, "a JSON report object")


async def federation(runs: int = 5) -> dict:
    """``mledge console federation --json``: sites, readiness to train, last runs with per-round F1, models."""
    command = ["console", "federation", "--runs", str(runs), "--json"]
    document = _expect(command, await run(command), dict, "a JSON federation object")
    for key in ("sites", "runs", "models", "summary"):
        if key not in document:
            raise WorkloadError(_command(command), f"the answer has no {key!r}")
    return document


async def costs_recommend(template: dict[str, Any]) -> dict:
    """``mledge costs recommend ... --json``: the cheapest matching offer per provider, ranked."""
    command = [
        "costs", "recommend",
        "--vcpus", str(template["vcpus"]),
        "--memory-gib", f"{template['memory_gib']:g}",
        "--gpus", str(template["gpus"]),
    ]
    if template.get("gpu_class"):
        command += ["--gpu-class", template["gpu_class"]]
    if template.get("regions"):
        command += ["--regions", ",".join(template["regions"])]
    if template.get("hours") is not None:
        command += ["--hours", f"{template['hours']:g}"]
    command.append("--json")
    return _expect(command, await run(command), dict, "a JSON recommendation object")
