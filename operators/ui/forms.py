"""The Costs page's two forms, checked before anything runs: a bad field is named in the error, never guessed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mledge.contracts import USE_CASE

DEFAULT_PROJECT = os.environ.get("MLEDGE_COSTS_PROJECT", USE_CASE)
DEFAULT_DAYS = 30
MAX_DAYS = 366
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")


class FormError(ValueError):
    """One or more fields are invalid; ``problems`` maps each field to what is wrong with it."""

    def __init__(self, form: str, problems: dict[str, str]) -> None:
        super().__init__(f"{form}: " + "; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.form = form
        self.problems = problems


@dataclass
class ReportQuery:
    project: str
    start: date
    end: date  # exclusive

    @property
    def last_day(self) -> date:
        return self.end - timedelta(days=1)


@dataclass
class Template:
    vcpus: int
    memory_gib: float
    gpus: int
    gpu_class: str = ""
    regions: list[str] = field(default_factory=list)
    hours: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus, "memory_gib": self.memory_gib, "gpus": self.gpus, "gpu_class": self.gpu_class,
            "regions": self.regions, "hours": self.hours,
        }


def _text(values: Mapping[str, Any], key: str) -> str:
    return str(values.get(key) or "").strip()


def report_query(
    values: Mapping[str, Any], today: date | None = None, *, last_day_key: str | None = None
) -> ReportQuery:
    """``project``, ``from`` and ``to`` (ISO dates, ``to`` exclusive like the CLI and FOCUS's ChargePeriodEnd).

    People pick the last day they want to see: with ``last_day_key`` that field (inclusive) replaces ``to``.
    By default the last 30 days up to today (UTC), as ``mledge costs report`` does.
    """
    today = today or datetime.now(UTC).date()
    problems: dict[str, str] = {}
    project = _text(values, "project") or DEFAULT_PROJECT
    if not _NAME.match(project):
        problems["project"] = f"{project!r} is not a project name (letters, digits, _ . : / -)"
    end_key = last_day_key or "to"
    shift = timedelta(days=1) if last_day_key else timedelta(0)
    dates: dict[str, date] = {}
    for key, default in ((end_key, today + timedelta(days=1) - shift), ("from", None)):
        raw = _text(values, key)
        try:
            dates[key] = date.fromisoformat(raw) if raw else default
        except ValueError:
            problems[key] = f"{raw!r} is not a date (YYYY-MM-DD)"
    if problems:
        raise FormError("cost report", problems)
    end = dates[end_key] + shift
    start = dates["from"] or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        problems["from"] = f"{start} is not before the end of the range ({end - shift})"
    elif (end - start).days > MAX_DAYS:
        problems[end_key] = f"the range is longer than {MAX_DAYS} days"
    if problems:
        raise FormError("cost report", problems)
    return ReportQuery(project, start, end)


def _number(values: Mapping[str, Any], key: str, kind: type, problems: dict[str, str], *, minimum: float,
            maximum: float, required: bool = True, default: Any = None) -> Any:
    raw = _text(values, key)
    if not raw:
        if required:
            problems[key] = "required"
        return default
    try:
        number = kind(raw)
    except ValueError:
        problems[key] = f"{raw!r} is not {'a whole number' if kind is int else 'a number'}"
        return default
    if not math.isfinite(number):  # NaN and infinities parse as floats
        problems[key] = f"{raw!r} is not a finite number"
    elif number < minimum:
        problems[key] = f"{raw} is below {minimum:g}"
    elif number > maximum:
        problems[key] = f"{raw} is above {maximum:g}"
    return number


def template(values: Mapping[str, Any]) -> Template:
    """The recommendation form: vCPUs, memory (GiB), GPU count and class, optional regions and hours."""
    problems: dict[str, str] = {}
    # Upper bounds: the largest machines the price catalogue could list, and a year of hours.
    vcpus = _number(values, "vcpus", int, problems, minimum=1, maximum=1024)
    memory = _number(values, "memory_gib", float, problems, minimum=0.5, maximum=32768)
    gpus = _number(values, "gpus", int, problems, minimum=0, maximum=64, required=False, default=0)
    hours = _number(values, "hours", float, problems, minimum=0.01, maximum=8784, required=False)
    gpu_class = _text(values, "gpu_class")
    if gpu_class and not _NAME.match(gpu_class):
        problems["gpu_class"] = f"{gpu_class!r} is not a GPU class such as T4 or A100"
    regions = [r.strip() for r in _text(values, "regions").split(",") if r.strip()]
    if bad := [r for r in regions if not _NAME.match(r)]:
        problems["regions"] = f"not region names: {', '.join(map(repr, bad))}"
    if problems:
        raise FormError("recommendation", problems)
    return Template(vcpus, memory, gpus, gpu_class, regions, hours)
