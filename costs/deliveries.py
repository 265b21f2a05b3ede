"""Deliveries of a file source: which files form one export of one period, and which delivery a day comes from.

Clouds write an export of a billing period again and again (AWS Data Exports refresh a month's files; Azure writes
each run of an export to its own folder, with a ``manifest.json``; people re-export a GCP view). Reading every
matching file and adding them up doubles a month; reading a header-only file as "the month" deletes it. So:

- A **delivery** is the set of data files in one folder (a run folder), or a single file whose name states its
  period (``focus_export_20261022_20261120.csv``). A manifest in the folder (Azure ``manifest.json``; AWS
  ``*Manifest.json``, also looked for under ``metadata/`` beside ``data/``) lists the files, the period, when
  the run was made and how many rows it has.
- Its **period** comes from the manifest, else from the path (``BILLING_PERIOD=2026-11``, a
  ``20261101-20261130`` folder or file name, ends inclusive), else from its own data (first to last charge day).
  A delivery covers its period and every day it has rows for.
- Per period, **exactly one delivery** is used: the newest (the manifest's time, else the newest file's
  modification time). Two as new as each other is an error naming both. Deliveries of different periods that
  cover the same day are an error naming both files, for the days they share.
- A day is only replaced by a **complete** delivery: readable, every file its manifest lists present, as many
  rows as the manifest says, and at least one row. Otherwise the day fails with the reason and the stored rows
  of that day are kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

_MONTH = re.compile(r"BILLING_PERIOD=(\d{4})-(\d{2})")
_RANGE = re.compile(r"(?<!\d)(\d{8})[-_](\d{8})(?!\d)")


@dataclass
class Delivery:
    """One export of one period: its files, what it covers and how complete it is."""

    folder: Path
    files: tuple[Path, ...]
    start: date | None  # first covered day; None until the data say (period_from == "data")
    end: date | None  # day after the last covered day
    period_from: str  # "manifest", "path" or "data"
    made_at: float  # seconds since the epoch: manifest time or newest file's modification time
    manifest: Path | None = None
    expected_rows: int | None = None
    missing: tuple[str, ...] = ()
    data_days: tuple[date, ...] = ()  # days the delivery has rows for, once read
    superseded: list[Delivery] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Where it is, for messages: the first file (and how many more)."""
        first = self.files[0] if self.files else self.folder
        more = f" (+{len(self.files) - 1} more file{'s' if len(self.files) > 2 else ''})" if len(self.files) > 1 else ""
        return f"{_short(first)}{more}"

    @property
    def period(self) -> str:
        if self.start is None or self.end is None:
            return "its data's days"
        return f"{self.start} to {self.end - timedelta(days=1)}"

    def covers(self, day: date) -> bool:
        in_period = self.start is not None and self.end is not None and self.start <= day < self.end
        return in_period or day in self.data_days

    def covered_days(self) -> set[date]:
        days = set(self.data_days)
        if self.start is not None and self.end is not None:
            days.update(self.start + timedelta(days=i) for i in range((self.end - self.start).days))
        return days


def _short(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[-3:]) if len(parts) > 3 else str(path)


def _day(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def period_from_path(path: Path) -> tuple[date, date] | None:
    """A period stated by the file name or one of its folders (nearest first); ends exclusive."""
    for part in [path.name, *[p.name for p in path.parents]]:
        month = _MONTH.search(part)
        if month:
            start = date(int(month.group(1)), int(month.group(2)), 1)
            return start, (start + timedelta(days=32)).replace(day=1)
        span = _RANGE.search(part)
        if span:
            try:
                first, last = _day(span.group(1)), _day(span.group(2))
            except ValueError:
                continue
            if first <= last:
                return first, last + timedelta(days=1)
    return None


def _names_period(path: Path) -> bool:
    return bool(_MONTH.search(path.name) or _RANGE.search(path.name))


def _manifest_for(folder: Path) -> Path | None:
    candidates = [folder / "manifest.json", *sorted(folder.glob("*Manifest.json"))]
    if "data" in folder.parts:  # AWS Data Exports: <export>/data/BILLING_PERIOD=X -> <export>/metadata/...
        index = len(folder.parts) - 1 - folder.parts[::-1].index("data")
        metadata = Path(*folder.parts[:index], "metadata", *folder.parts[index + 1:])
        candidates += [metadata / "manifest.json", *sorted(metadata.glob("*Manifest.json"))]
    return next((c for c in candidates if c.is_file()), None)


def _stamp(text: str) -> datetime:
    text = text.strip().replace("Z", "+00:00")
    if re.fullmatch(r"\d{8}T\d{6}(\.\d+)?\+00:00", text):  # AWS: 20261101T000000.000Z
        text = f"{text[:4]}-{text[4:6]}-{text[6:8]}T{text[9:11]}:{text[11:13]}:{text[13:]}"
    return datetime.fromisoformat(text)


def read_manifest(path: Path) -> dict:
    """Files, period, time and row count of an AWS Data Exports or Azure cost export manifest."""
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{_short(path)}: manifest is not readable JSON: {exc}") from None
    files: list[str] = []
    rows: int | None = None
    if isinstance(document.get("blobs"), list):  # Azure
        files = [str(b.get("blobName", "")) for b in document["blobs"]]
        counts = [b.get("dataRowCount") for b in document["blobs"]]
        if all(isinstance(c, int) for c in counts):
            rows = sum(counts)
    elif isinstance(document.get("dataFiles"), list):  # AWS
        files = [str(f) for f in document["dataFiles"]]
    if isinstance(document.get("dataRowCount"), int):
        rows = document["dataRowCount"]
    start = end = None
    made_at = None
    run = document.get("runInfo") or {}
    billing = document.get("billingPeriod") or {}
    try:
        if run.get("startDate") and run.get("endDate"):  # Azure: inclusive end date
            start = _stamp(run["startDate"]).date()
            end = _stamp(run["endDate"]).date() + timedelta(days=1)
        elif billing.get("start") and billing.get("end"):  # AWS: exclusive end
            start, end = _stamp(billing["start"]).date(), _stamp(billing["end"]).date()
        if run.get("submittedTime"):
            made_at = _stamp(run["submittedTime"]).timestamp()
    except ValueError as exc:
        raise ValueError(f"{_short(path)}: manifest period or time unreadable: {exc}") from None
    return {"files": [f.rstrip("/").split("/")[-1] for f in files if f], "start": start, "end": end,
            "made_at": made_at, "rows": rows}


def discover(files: Sequence[Path]) -> list[Delivery]:
    """Every delivery among ``files`` (data files only), before choosing between them."""
    by_folder: dict[Path, list[Path]] = {}
    singles: list[Path] = []
    for path in files:
        (singles if _names_period(path) else by_folder.setdefault(path.parent, [])).append(path)
    deliveries = []
    for folder, members in sorted(by_folder.items()):
        deliveries.append(_delivery(folder, tuple(sorted(members))))
    for path in sorted(singles):
        deliveries.append(_delivery(path.parent, (path,), own_period=True))
    return deliveries


def _delivery(folder: Path, files: tuple[Path, ...], *, own_period: bool = False) -> Delivery:
    made_at = max(p.stat().st_mtime for p in files)
    manifest = None if own_period else _manifest_for(folder)
    if manifest is not None:
        info = read_manifest(manifest)
        present = {p.name for p in files}
        listed = info["files"]
        chosen = tuple(p for p in files if p.name in listed) if listed else files
        missing = tuple(name for name in listed if name not in present)
        start, end = info["start"], info["end"]
        source = "manifest"
        if start is None:
            span = period_from_path(files[0])
            start, end, source = (span[0], span[1], "path") if span else (None, None, "data")
        return Delivery(folder, chosen or files, start, end, source,
                        info["made_at"] if info["made_at"] is not None else manifest.stat().st_mtime,
                        manifest, info["rows"], missing)
    span = period_from_path(files[0])
    if span is None:
        return Delivery(folder, files, None, None, "data", made_at)
    return Delivery(folder, files, span[0], span[1], "path", made_at)


@dataclass
class Choice:
    """The deliveries used, and the days on which two of them disagree (day -> message naming both)."""

    used: list[Delivery]
    conflicts: dict[date, str]
    problems: dict[int, str]  # id(delivery) -> why its days cannot be replaced (ambiguous newest)


def choose(deliveries: Iterable[Delivery], data_days: Callable[[Delivery], tuple[date, ...]]) -> Choice:
    """One delivery per period (the newest), and the days where deliveries of different periods overlap.

    ``data_days`` reads a delivery (once) and returns the days it has rows for; it is called for every used
    delivery, so coverage includes data outside a stated period.
    """
    by_period: dict[tuple, list[Delivery]] = {}
    for delivery in deliveries:
        if delivery.period_from == "data":
            delivery.data_days = data_days(delivery)
            days = delivery.data_days
            delivery.start = min(days) if days else None
            delivery.end = max(days) + timedelta(days=1) if days else None
            key: tuple = ("data", delivery.folder, delivery.files)
        else:
            key = (delivery.start, delivery.end)
        by_period.setdefault(key, []).append(delivery)
    used: list[Delivery] = []
    problems: dict[int, str] = {}
    for group in by_period.values():
        group.sort(key=lambda d: d.made_at, reverse=True)
        newest = group[0]
        newest.superseded = group[1:]
        if len(group) > 1 and group[1].made_at == newest.made_at:
            problems[id(newest)] = (f"two deliveries of {newest.period} are equally new, so neither is known to "
                                    f"replace the other: {newest.label} and {group[1].label}")
        used.append(newest)
    for delivery in used:
        if delivery.period_from != "data":
            delivery.data_days = data_days(delivery)
    conflicts: dict[date, str] = {}
    for i, first in enumerate(used):
        first_days = first.covered_days()
        for second in used[i + 1:]:
            for day in sorted(first_days & second.covered_days()):
                conflicts.setdefault(day, f"deliveries overlap on {day}: {first.label} ({first.period}) and "
                                          f"{second.label} ({second.period}); remove or move one of them")
    return Choice(used, conflicts, problems)
