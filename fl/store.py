"""A site's local data store: append-only CSV batches in a folder that only that site reads.

Layout under ``<data_root>/<site>/``:
    batches/batch-000001.csv ...   accepted batches, never rewritten
    generator_state.json           where the site's generator stopped (tool wear, next UDI)

Reading validates every batch and fails with ``SiteDataError`` naming the site, the file and the problem;
nothing is deleted or rewritten by reading or training.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from fl.generator import COLUMNS, LABEL, ToolState, generate_batch
from fl.sites import SiteProfile

NUMERIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("product_id", "type"))
BATCH_GLOB = "batch-*.csv"


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


def validate_batch(site: str, path: Path, frame: pd.DataFrame) -> None:
    """Raise SiteDataError if a batch does not match the axis_failures schema."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    extra = [c for c in frame.columns if c not in COLUMNS]
    if missing or extra:
        parts = ([f"missing columns {missing}"] if missing else []) + ([f"unexpected columns {extra}"] if extra else [])
        raise SiteDataError(site, "; ".join(parts), path)
    if frame.empty:
        raise SiteDataError(site, "batch has no rows", path)
    nans = frame[list(COLUMNS)].isna().sum()
    if nans.any():
        bad = {c: int(n) for c, n in nans.items() if n}
        raise SiteDataError(site, f"missing values in {bad}", path)
    wrong = [c for c in NUMERIC_COLUMNS if not pd.api.types.is_numeric_dtype(frame[c])]
    if wrong:
        raise SiteDataError(site, f"non-numeric values in {wrong}", path)
    bad_types = sorted(set(frame["type"]) - {"L", "M", "H"})
    if bad_types:
        raise SiteDataError(site, f"unknown product types {bad_types[:5]}", path)
    if not frame[LABEL].isin((0, 1)).all():
        raise SiteDataError(site, f"{LABEL} must be 0 or 1", path)


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
