"""A site's local data store: append-only CSV batches in a folder that only that site reads.

Layout under ``<data_root>/<site>/``:
    incoming/<any>.csv             new batches land here (the generator, or a site's own export)
    batches/batch-000001.csv ...   accepted batches, never rewritten
    quarantine/<file>              rejected files, each with <file>.reason.json (site, file, problem, time)
    generator_state.json           where the site's generator stopped (tool wear, next UDI)

Collection (``accept_incoming``) validates each incoming file against the schema and moves it to ``batches/``
under the next batch number or to ``quarantine/`` with its reason: nothing is deleted or overwritten.
Reading validates every batch and fails with ``SiteDataError`` naming the site, the file and the problem;
nothing is deleted or rewritten by reading or training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mledge.onsite.generator import ToolState, generate_batch
from mledge.onsite.profiles import SiteProfile
from mledge.onsite.schema import COLUMNS, FLAG_COLUMNS, INTEGER_COLUMNS, LABEL, NUMERIC_COLUMNS, TYPES

BATCH_GLOB = "batch-*.csv"
BATCH_NAME = re.compile(r"batch-(\d{6,})\.csv")
INCOMING, BATCHES, QUARANTINE = "incoming", "batches", "quarantine"
REASON_SUFFIX = ".reason.json"
# Share of rows with a missing value that a batch may carry; those rows are quarantined, the rest accepted.
DEFAULT_MAX_NAN_SHARE = 0.0


class SiteDataError(ValueError):
    """A site's store cannot be used; the message names the site, the file and what is wrong."""

    def __init__(self, site: str, problem: str, path: Path | None = None) -> None:
        self.site, self.problem, self.path = site, problem, path
        where = f" ({path})" if path else ""
        super().__init__(f"site {site}: {problem}{where}")


def site_dir(data_root: Path, site: str) -> Path:
    """Where a site's store lives on a machine that keeps several (the local demo)."""
    return Path(data_root) / site


def batch_paths(store: Path) -> list[Path]:
    """The accepted batches of one site's store (its own folder), oldest first."""
    return sorted((Path(store) / "batches").glob(BATCH_GLOB))


def append_generated_batch(store: Path, profile: SiteProfile, rows: int | None = None) -> Path:
    """Generate the site's next batch and add it to its store; returns the new batch file."""
    root = Path(store)
    (root / "batches").mkdir(parents=True, exist_ok=True)
    state_file = root / "generator_state.json"
    state = ToolState(**json.loads(state_file.read_text())) if state_file.exists() else None
    index = len(batch_paths(root)) + 1
    frame, state = generate_batch(profile, index, state, rows)
    path = root / "batches" / f"batch-{index:06d}.csv"
    if path.exists():  # never overwrite an accepted batch
        raise FileExistsError(f"site {profile.name}: {path} already exists")
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.rename(path)
    state_file.write_text(json.dumps(asdict(state)))
    return path


def ensure_batches(store: Path, profile: SiteProfile, batches: int) -> list[Path]:
    """Give the site's store at least ``batches`` generated batches (existing ones are kept); returns new files."""
    added = []
    while len(batch_paths(store)) < batches:
        added.append(append_generated_batch(store, profile))
    return added


def schema_problems(frame: pd.DataFrame, check_missing_values: bool = True) -> list[str]:
    """Every way a batch breaks the axis_failures schema (empty when it fits).

    Structure first: with missing or unexpected columns, or no rows, the values are not looked at.
    ``check_missing_values=False`` leaves missing values to the caller (collection allows a share of them).
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    extra = [c for c in frame.columns if c not in COLUMNS]
    if missing or extra:
        return ([f"missing columns {missing}"] if missing else []) + ([f"unexpected columns {extra}"] if extra else [])
    if frame.empty:
        return ["batch has no rows"]
    problems = []
    nans = frame[list(COLUMNS)].isna().sum()
    if check_missing_values and nans.any():
        problems.append(f"missing values in {({c: int(n) for c, n in nans.items() if n})}")
    wrong = [c for c in NUMERIC_COLUMNS if not pd.api.types.is_numeric_dtype(frame[c])]
    if wrong:
        problems.append(f"non-numeric values in {wrong}")
    fractional = [
        c
        for c in INTEGER_COLUMNS
        if c not in wrong and not np.all(np.mod(frame[c].dropna().to_numpy(float), 1.0) == 0.0)
    ]
    if fractional:
        problems.append(f"non-integer values in {fractional}")
    bad_types = sorted({str(t) for t in frame["type"].dropna()} - set(TYPES))
    if bad_types:
        problems.append(f"unknown product types {bad_types[:5]}")
    not_flags = [c for c in FLAG_COLUMNS if c not in wrong and not frame[c].dropna().isin((0, 1)).all()]
    if LABEL in not_flags:
        problems.append(f"{LABEL} must be 0 or 1")
    if modes := [c for c in not_flags if c != LABEL]:
        problems.append(f"failure modes {modes} must be 0 or 1")
    return problems


def validate_batch(site: str, path: Path, frame: pd.DataFrame) -> None:
    """Raise SiteDataError if a batch does not match the axis_failures schema (naming every problem)."""
    problems = schema_problems(frame)
    if problems:
        raise SiteDataError(site, "; ".join(problems), path)


def read_batch(site: str, path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SiteDataError(site, f"unreadable batch: {exc.__class__.__name__}: {exc}", path) from exc
    validate_batch(site, path, frame)
    return frame


def load_site_data(store: Path, site: str) -> pd.DataFrame:
    """All accepted batches of a site's store, validated; raises SiteDataError on the first problem."""
    paths = batch_paths(store)
    if not paths:
        raise SiteDataError(site, "store is empty: no batches", Path(store) / "batches")
    return pd.concat([read_batch(site, p) for p in paths], ignore_index=True)


def is_held_out(frame: pd.DataFrame) -> pd.Series:
    """The site's held-out rows: every fifth UDI, stable across batches and runs."""
    return frame["udi"] % 5 == 0


# --- collection: incoming -> batches | quarantine ---------------------------------------------------------------


def incoming_paths(store: Path) -> list[Path]:
    """Files waiting in a store's incoming/ folder, in arrival order (modification time, then name)."""
    folder = Path(store) / INCOMING
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".tmp"]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def quarantined(store: Path) -> list[dict]:
    """The reason documents of a store's quarantined files, oldest first."""
    folder = Path(store) / QUARANTINE
    reasons = sorted(folder.glob(f"*{REASON_SUFFIX}")) if folder.is_dir() else []
    return sorted((json.loads(p.read_text()) for p in reasons), key=lambda r: (r["time"], r["quarantined_as"]))


def _next_batch_number(store: Path) -> int:
    numbers = [int(m.group(1)) for p in batch_paths(store) if (m := BATCH_NAME.fullmatch(p.name))]
    return max(numbers, default=0) + 1


def _link_without_overwrite(source: Path, folder: Path, name_for) -> Path:
    """Hard-link ``source`` into ``folder`` under the first free name ``name_for(0)``, ``name_for(1)``, ...

    A link fails instead of replacing an existing file, so two collectors can never overwrite each other.
    """
    folder.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        target = folder / name_for(attempt)
        try:
            _place(source, target)
            return target
        except FileExistsError:
            attempt += 1


def _place(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target``, failing with FileExistsError rather than replacing anything."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: an exclusive create is just as safe, only slower
        with source.open("rb") as src, target.open("xb") as out:
            shutil.copyfileobj(src, out)


def _quarantine(store: Path, site: str, path: Path, problems: list[str], extra: dict | None = None) -> dict:
    def name_for(attempt: int) -> str:
        return path.name if attempt == 0 else f"{path.stem}.{attempt}{path.suffix}"

    target = _link_without_overwrite(path, Path(store) / QUARANTINE, name_for)
    reason = {
        "site": site,
        "file": path.name,
        "quarantined_as": target.name,
        "problem": "; ".join(problems),
        "problems": problems,
        "time": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    reason_file = target.with_name(target.name + REASON_SUFFIX)
    with reason_file.open("x") as handle:  # "x": a reason is never overwritten either
        json.dump(reason, handle, indent=2)
    path.unlink()  # the file now lives in quarantine/: a move, nothing lost
    return {"file": path.name, "reason": reason["problem"], "path": str(target), "reason_file": str(reason_file)}


def _accept(store: Path, path: Path) -> Path:
    batches = Path(store) / BATCHES
    first = _next_batch_number(store)
    target = _link_without_overwrite(path, batches, lambda attempt: f"batch-{first + attempt:06d}.csv")
    path.unlink()
    return target


def _read_incoming(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    try:
        return pd.read_csv(path), None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"unreadable file: {exc.__class__.__name__}: {exc}"


def accept_incoming(store: Path, site: str, max_nan_share: float = DEFAULT_MAX_NAN_SHARE) -> dict:
    """Validate every file in the store's incoming/ folder; accept it as the next batch or quarantine it.

    A file is quarantined, with ``<file>.reason.json`` beside it, when it cannot be read, has missing or
    unexpected columns, no rows, values of the wrong type, or more rows with missing values than
    ``max_nan_share`` allows. Within that share, the complete rows are accepted as the next batch and the
    original file (all rows) is quarantined with the numbers of the rows that were held back.
    Returns ``{"site", "accepted": [{"file", "batch", "rows"}], "quarantined": [{"file", "reason", ...}]}``.
    """
    if not 0.0 <= max_nan_share <= 1.0:
        raise ValueError(f"max_nan_share must be within [0, 1], got {max_nan_share}")
    accepted: list[dict] = []
    rejected: list[dict] = []
    for path in incoming_paths(store):
        frame, unreadable = _read_incoming(path)
        if frame is None:
            rejected.append(_quarantine(store, site, path, [unreadable]))
            continue
        problems = schema_problems(frame, check_missing_values=False)
        incomplete = frame.isna().any(axis=1) if not problems else pd.Series(False, index=frame.index)
        share = float(incomplete.mean()) if len(frame) else 0.0
        if not problems and share > max_nan_share:
            counts = {c: int(n) for c, n in frame.isna().sum().items() if n}
            problems.append(
                f"missing values in {counts}: {int(incomplete.sum())} of {len(frame)} rows ({share:.1%}) "
                f"exceed the limit of {max_nan_share:.1%}"
            )
        if problems:
            rejected.append(_quarantine(store, site, path, problems))
            continue
        if incomplete.any():
            # Accept the complete rows; keep the original file, every row of it, in quarantine.
            tmp = path.with_name(f".{path.name}.complete.tmp")
            frame[~incomplete].to_csv(tmp, index=False)
            batch = _accept(store, tmp)
            held = [int(i) + 2 for i in np.flatnonzero(incomplete.to_numpy())]  # CSV line numbers (header = 1)
            note = f"{len(held)} row(s) with missing values held back (CSV lines {held[:20]}); the rest accepted"
            kept = {"accepted_as": batch.name, "held_back_lines": held}
            rejected.append(_quarantine(store, site, path, [note], kept))
            accepted.append({"file": path.name, "batch": batch.name, "rows": int((~incomplete).sum())})
            continue
        batch = _accept(store, path)
        accepted.append({"file": path.name, "batch": batch.name, "rows": len(frame)})
    return {"site": site, "accepted": accepted, "quarantined": rejected}


def _write_new(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    try:
        _place(tmp, path)  # never replaces a file that is already there
    finally:
        tmp.unlink()


def collect_batch(
    store: Path, profile: SiteProfile, rows: int | None = None, max_nan_share: float = DEFAULT_MAX_NAN_SHARE
) -> dict:
    """Generate the site's next batch into incoming/ and run collection (``accept_incoming``) on it.

    Files already waiting in incoming/ are collected first, so the new batch's number is the one its drift
    schedule was drawn for. Returns accept_incoming's result plus ``generated`` (the incoming file name).
    """
    root = Path(store)
    before = accept_incoming(root, profile.name, max_nan_share)
    state_file = root / "generator_state.json"
    state = ToolState(**json.loads(state_file.read_text())) if state_file.exists() else None
    index = len(batch_paths(root)) + 1
    frame, state = generate_batch(profile, index, state, rows)
    (root / INCOMING).mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    incoming = root / INCOMING / f"generated-{index:06d}-{stamp}.csv"
    _write_new(incoming, frame)
    tmp_state = state_file.with_name(f".{state_file.name}.tmp")
    tmp_state.write_text(json.dumps(asdict(state)))
    tmp_state.replace(state_file)  # generator state is ours to rewrite: it is bookkeeping, not data
    after = accept_incoming(root, profile.name, max_nan_share)
    return {
        "site": profile.name,
        "generated": incoming.name,
        "accepted": before["accepted"] + after["accepted"],
        "quarantined": before["quarantined"] + after["quarantined"],
    }
