"""A site's local data store: append-only CSV batches in a folder that only that site reads.

Layout under ``<data_root>/<site>/``:
    incoming/<any>.csv             new batches land here (the generator, or a site's own export)
    batches/batch-000001.csv ...   accepted batches, never rewritten
    quarantine/<file>              rejected files, each with <file>.reason.json (site, file, problem, time)
    claims/<id>/                   a file being accepted: claimed by rename, its decision written ahead
    ledger/<sha256>.json           content ledger: which batch holds the content with this hash
    cache/parsed-<version>/        validated batches, parsed once per content (derived data, safe to delete)
    collections/<run>.json         what each ``collect`` run generated (a retried run finds its batch)
    generator_state.json           where the site's generator stopped (tool wear, next UDI)
    .store.lock                    held (flock) by the one process accepting or collecting

Collection (``accept_incoming``) takes each entry of ``incoming/`` by renaming it into a claim folder, so a file is
never taken twice, decides (accept as the next batch, accept its complete rows, or quarantine with a reason),
writes that decision into the claim, and only then carries it out; every step after the decision is idempotent,
so a crash between any two steps is finished by the next acceptance (a claim holding no file yet is rolled back).
Only regular files are read; symbolic links, FIFOs, devices and folders are quarantined without being followed
or opened. Files above a size cap are quarantined without being parsed; content already accepted (by hash, under
any name) is quarantined naming its batch. Nothing is deleted or overwritten.
Reading validates every batch and fails with ``SiteDataError`` naming the site, the file and the problem; a
batch is parsed and validated once per content (``cache/``): nothing else is written by reading or training.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mledge.onsite.generator import ToolState, generate_batch
from mledge.onsite.profiles import SiteProfile
from mledge.onsite.schema import (
    COLUMNS,
    FLAG_COLUMNS,
    INTEGER_COLUMNS,
    LABEL,
    NUMERIC_COLUMNS,
    SENSOR_RANGES,
    TYPES,
)

BATCH_GLOB = "batch-*.csv"
BATCH_NAME = re.compile(r"batch-(\d{6,})\.csv")
INCOMING, BATCHES, QUARANTINE = "incoming", "batches", "quarantine"
CLAIMS, LEDGER, CACHE, COLLECTIONS = "claims", "ledger", "cache", "collections"
LOCK_FILE = ".store.lock"
REASON_SUFFIX = ".reason.json"
# Share of rows with a missing value that a batch may carry; those rows are quarantined, the rest accepted.
DEFAULT_MAX_NAN_SHARE = 0.0
# Largest incoming file that is read at all (a generated batch of 1,000 rows is about 50 kB).
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
# Bump when validation changes what it accepts: cached frames validated by older rules are then ignored.
VALIDATION_VERSION = 2
# Example CSV lines a reason names per problem.
EXAMPLES = 5

# Fault injection for crash tests (the chaos test, tests/workload/onsite): with MLEDGE_STORE_CRASH_AT=<step> the
# process exits at once, without any clean-up, when it reaches that step. Steps, in the order they happen:
CRASH_ENV = "MLEDGE_STORE_CRASH_AT"
CRASH_EXIT_CODE = 75
ACCEPT_STEPS = ("claim-opened", "claimed", "decided", "batch-placed", "ledgered", "quarantine-placed", "reason-written")
COLLECT_STEPS = ("collect-planned", "collect-written", "collect-state-saved", "collect-accepted")


def _step(name: str) -> None:
    """A point between two steps of acceptance or collection (each leaves the store recoverable)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT_CODE)  # a crash: no finally blocks, no flushing, the lock released by the kernel


class SiteDataError(ValueError):
    """A site's store cannot be used; the message names the site, the file and what is wrong.

    The message may leave the site (a ClientApp's error reply, a task's log), so it names no cell's value;
    ``problem`` keeps them for the site's own eyes."""

    def __init__(self, site: str, problem: str, path: Path | None = None) -> None:
        self.site, self.problem, self.path = site, problem, path
        where = f" ({path})" if path else ""
        super().__init__(f"site {site}: {disclosed(problem)}{where}")


def site_dir(data_root: Path, site: str) -> Path:
    """Where a site's store lives on a machine that keeps several (the local demo)."""
    return Path(data_root) / site


def batch_paths(store: Path) -> list[Path]:
    """The accepted batches of one site's store (its own folder), oldest first."""
    return sorted((Path(store) / "batches").glob(BATCH_GLOB))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- one writer at a time ----------------------------------------------------------------------------------------

_held = threading.local()  # the stores this thread holds the lock of, and how often (re-entrant per thread)


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the store's writer lock (an flock on ``.store.lock``; re-entrant within a thread).

    The kernel releases it when the holder dies, so whoever takes it next may finish what a crash left.
    """
    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(root)
    held = _held.__dict__.setdefault("stores", {})
    if key in held:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held[key] = 1
        try:
            yield
        finally:
            del held[key]
    finally:
        os.close(fd)  # closing releases the flock


# --- small atomic writes -------------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, document: dict) -> None:
    """Write ``document`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _place(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target``, failing with FileExistsError rather than replacing anything."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: an exclusive create is just as safe, only slower
        with source.open("rb") as src, target.open("xb") as out:
            shutil.copyfileobj(src, out)


def _same_content(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


# --- generated batches (``mledge data init``) ----------------------------------------------------------------------


def _load_state(root: Path) -> ToolState | None:
    state_file = root / "generator_state.json"
    return ToolState(**json.loads(state_file.read_text())) if state_file.exists() else None


def _save_state(root: Path, state: ToolState | dict) -> None:
    # Generator state is ours to rewrite: it is bookkeeping, not data.
    _write_json_atomic(root / "generator_state.json", asdict(state) if isinstance(state, ToolState) else state)


def append_generated_batch(store: Path, profile: SiteProfile, rows: int | None = None) -> Path:
    """Generate the site's next batch and add it to its store; returns the new batch file."""
    root = Path(store)
    with store_lock(root):
        (root / "batches").mkdir(parents=True, exist_ok=True)
        state = _load_state(root)
        index = len(batch_paths(root)) + 1
        frame, state = generate_batch(profile, index, state, rows)
        path = root / "batches" / f"batch-{index:06d}.csv"
        if path.exists():  # never overwrite an accepted batch
            raise FileExistsError(f"site {profile.name}: {path} already exists")
        tmp = path.with_suffix(".tmp")
        data = frame.to_csv(index=False).encode()
        tmp.write_bytes(data)
        tmp.rename(path)
        digest = _sha256(data)
        _ledger_put(root, {"sha256": digest, "batch_sha256": digest, "batch": path.name, "file": path.name,
                           "rows": len(frame), "time": _now(), "source": "generated"})
        _save_state(root, state)
    return path


def ensure_batches(store: Path, profile: SiteProfile, batches: int) -> list[Path]:
    """Give the site's store at least ``batches`` generated batches (existing ones are kept); returns new files."""
    added = []
    while len(batch_paths(store)) < batches:
        added.append(append_generated_batch(store, profile))
    return added


# --- validation ----------------------------------------------------------------------------------------------------


def _lines(mask: np.ndarray) -> list[int]:
    """CSV line numbers of the rows in ``mask`` (the header is line 1)."""
    return [int(i) + 2 for i in np.flatnonzero(mask)]


def _where(mask: np.ndarray, values: np.ndarray | None = None) -> str:
    """'<n> row(s), e.g. CSV lines [..]' (with their values, as a JSON list: see ``disclosed``)."""
    lines = _lines(mask)
    text = f"{len(lines)} row(s), e.g. CSV lines {lines[:EXAMPLES]}"
    if values is not None:
        shown = [str(v) if isinstance(v, str) else float(v) for v in values[mask][:EXAMPLES]]
        text += f" (values {json.dumps(shown)})"
    return text


# " (values [...])" as _where writes it: a JSON list of strings and numbers, whatever a cell held.
_VALUES = re.compile(r' \(values \[(?:[^\[\]"]|"(?:[^"\\]|\\.)*")*\]\)')


def disclosed(problem: str) -> str:
    """A reason as it may leave the site (XCom, task logs): kinds of problem, columns, counts and CSV line numbers,
    never a cell's value. The values stay in the reason file beside the quarantined file, at the site."""
    return _VALUES.sub("", problem)


def _as_float(value) -> float:
    """A cell of a text column as a number; NaN where it is not one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def schema_problems(frame: pd.DataFrame, check_missing_values: bool = True) -> list[str]:
    """Every way a batch breaks the axis_failures schema (empty when it fits).

    Structure first: with missing or unexpected columns, or no rows, the values are not looked at.
    ``check_missing_values=False`` leaves missing values to the caller (collection allows a share of them).
    Values: numbers where numbers are due, finite, whole where counts are due, known product types, 0/1 flags,
    and sensor readings within their physical range (``schema.SENSOR_RANGES``); each problem names the column,
    how many rows and example CSV lines.
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
    numbers: dict[str, np.ndarray] = {}  # each numeric column as floats (NaN where missing)
    wrong = []
    for c in NUMERIC_COLUMNS:
        column = frame[c]
        if pd.api.types.is_numeric_dtype(column):
            numbers[c] = column.to_numpy(dtype=float, na_value=np.nan)
            continue
        wrong.append(c)
        raw = column.to_numpy(dtype=object)
        parsed = np.array([_as_float(v) for v in raw])
        text = ~column.isna().to_numpy() & np.isnan(parsed)
        if text.any():
            problems.append(f"non-numeric values in {c}: {_where(text, raw.astype(str))}")
        else:  # numbers too large for a float64 (1e999) are read as text: report them as what they are
            numbers[c] = parsed
    for c, values in numbers.items():
        if (infinite := np.isinf(values)).any():
            problems.append(f"non-finite values in {c}: {_where(infinite, values)}")
    fractional = []
    for c in INTEGER_COLUMNS:
        if c in numbers and c not in wrong:
            finite = numbers[c][np.isfinite(numbers[c])]
            if not np.all(np.mod(finite, 1.0) == 0.0):
                fractional.append(c)
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
    for c, (low, high, unit) in SENSOR_RANGES.items():
        if c not in numbers or c in wrong:
            continue
        values = numbers[c]
        outside = np.isfinite(values) & ((values < low) | (values > high))
        if outside.any():
            problems.append(
                f"out-of-range values in {c} (physical range {low:g} to {high:g} {unit}): {_where(outside, values)}"
            )
    return problems


def validate_batch(site: str, path: Path, frame: pd.DataFrame) -> None:
    """Raise SiteDataError if a batch does not match the axis_failures schema (naming every problem)."""
    problems = schema_problems(frame)
    if problems:
        raise SiteDataError(site, "; ".join(problems), path)


# --- reading, once per content -------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without following a symbolic link or blocking on a FIFO.

    Raises OSError (ELOOP for a symbolic link), or ``_NotRegular`` naming what it is when it is not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _NotRegular(_kind(info.st_mode))
    return fd, info


class _NotRegular(OSError):
    pass


def _read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (at most ``limit + 1`` of them when a limit is given)."""
    fd, _ = _open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read() if limit is None else handle.read(limit + 1)


def _parse(data: bytes) -> tuple[pd.DataFrame | None, str | None]:
    try:
        return pd.read_csv(io.BytesIO(data)), None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return None, f"{exc.__class__.__name__}: {exc}"


def cache_version() -> str:
    """Key of the parsed-batch cache: the schema facts, the validation rules and the parser's version."""
    facts = (COLUMNS, TYPES, INTEGER_COLUMNS, FLAG_COLUMNS, NUMERIC_COLUMNS, sorted(SENSOR_RANGES.items()),
             VALIDATION_VERSION, pd.__version__, np.__version__)
    return _sha256(repr(facts).encode())[:16]


def _cache_dir(store: Path) -> Path:
    return Path(store) / CACHE / f"parsed-{cache_version()}"


def _cache_get(store: Path, digest: str) -> pd.DataFrame | None:
    path = _cache_dir(store) / f"{digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:  # plain arrays only: no code runs from the cache
            meta = json.loads(str(saved["__meta__"]))
            columns = {}
            for name, dtype in meta["columns"]:
                values = saved[f"c{len(columns)}"]
                columns[name] = values.astype(object) if dtype == "object" else values
        if meta["sha256"] != digest:
            return None
        return pd.DataFrame(columns)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache entry: parse again, and rewrite it


def _cache_put(store: Path, digest: str, frame: pd.DataFrame) -> None:
    """Keep a validated frame for its content hash; best effort (a read-only store just parses every time)."""
    arrays, columns = {}, []
    for i, name in enumerate(frame.columns):
        values = frame[name].to_numpy()
        if values.dtype == object:
            if not all(isinstance(v, str) for v in values):
                return  # not plain text: not worth a format of its own; this batch is parsed each time
            values = values.astype(str)
            columns.append((str(name), "object"))
        elif values.dtype.kind not in "biuf":
            return
        else:
            columns.append((str(name), values.dtype.str))
        arrays[f"c{i}"] = values
    arrays["__meta__"] = np.array(json.dumps({"sha256": digest, "columns": columns}))
    folder = _cache_dir(store)
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            for old in (Path(store) / CACHE).glob("parsed-*"):  # frames validated by other rules: drop them
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        tmp = folder / f".{digest}.{secrets.token_hex(4)}.tmp"
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, folder / f"{digest}.npz")
    except OSError:
        return


def read_batch(site: str, path: Path) -> pd.DataFrame:
    """One batch, validated; raises SiteDataError naming the site, the file and every problem.

    Only a regular file is read (a symbolic link is not followed). A batch in a store's ``batches/`` is parsed
    and validated once per content: later reads of the same bytes load the validated frame from ``cache/``.
    """
    path = Path(path)
    try:
        data = _read_regular(path)
    except _NotRegular as exc:
        raise SiteDataError(site, f"not a regular file: {exc}; only regular files are read", path) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SiteDataError(site, "not a regular file: a symbolic link, never followed", path) from exc
        raise SiteDataError(site, f"unreadable batch: {exc.__class__.__name__}: {exc}", path) from exc
    digest = _sha256(data)
    store = path.parent.parent if path.parent.name == BATCHES else None
    if store is not None and (cached := _cache_get(store, digest)) is not None:
        return cached
    frame, unreadable = _parse(data)
    if frame is None:
        raise SiteDataError(site, f"unreadable batch: {unreadable}", path)
    validate_batch(site, path, frame)
    if store is not None:
        _cache_put(store, digest, frame)
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


# --- the content ledger --------------------------------------------------------------------------------------------


def _ledger_entries(store: Path) -> list[dict]:
    folder = Path(store) / LEDGER
    if not folder.is_dir():
        return []
    return [e for p in sorted(folder.glob("*.json")) if (e := _read_json(p))]


def ledger_lookup(store: Path, digest: str) -> dict | None:
    """The ledger entry of accepted content with this SHA-256 (None when no accepted batch holds it).

    An entry counts only while its batch still holds what was accepted (``batch_sha256``): a batch removed or
    rewritten by hand is no reason to refuse content.
    """
    entry = _read_json(Path(store) / LEDGER / f"{digest}.json")
    if not entry:
        return None
    try:
        held = _sha256(_read_regular(Path(store) / BATCHES / entry["batch"]))
    except OSError:
        return None
    return entry if held == entry.get("batch_sha256") else None


def _ledger_put(store: Path, entry: dict) -> None:
    """Record that ``entry["sha256"]`` is in batch ``entry["batch"]``; the first batch of a content stays."""
    folder = Path(store) / LEDGER
    folder.mkdir(parents=True, exist_ok=True)
    if ledger_lookup(store, entry["sha256"]) is not None:
        return  # already recorded (a finished step done again, or the first of two equal batches)
    _write_json_atomic(folder / f"{entry['sha256']}.json", entry)


def _backfill_ledger(store: Path) -> None:
    """Record batches the ledger does not know (a store from before it, a batch placed by hand)."""
    known = {e.get("batch") for e in _ledger_entries(store)}
    for path in batch_paths(store):
        if path.name in known:
            continue
        try:
            data = _read_regular(path)
        except OSError:
            continue  # reading it will name the problem
        digest = _sha256(data)
        _ledger_put(store, {"sha256": digest, "batch_sha256": digest, "batch": path.name, "file": path.name,
                            "rows": None, "time": _now(), "source": "backfill"})


# --- collection: incoming -> claims -> batches | quarantine --------------------------------------------------------


def incoming_paths(store: Path) -> list[Path]:
    """Entries waiting in a store's incoming/ folder, in arrival order (modification time, then name).

    Every kind of entry is listed (acceptance refuses what is not a regular file); hidden names and ``*.tmp``
    (files still being written) are not. A symbolic link's own time counts: it is never followed.
    """
    folder = Path(store) / INCOMING
    if not folder.is_dir() or folder.is_symlink():
        return []
    arrived = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix == ".tmp":
            continue
        with contextlib.suppress(FileNotFoundError):  # taken away meanwhile: not waiting any more
            arrived.append((path.lstat().st_mtime_ns, path.name, path))
    return [path for *_, path in sorted(arrived)]


def quarantined(store: Path) -> list[dict]:
    """The reason documents of a store's quarantined files, oldest first."""
    folder = Path(store) / QUARANTINE
    reasons = sorted(folder.glob(f"*{REASON_SUFFIX}")) if folder.is_dir() else []
    return sorted((json.loads(p.read_text()) for p in reasons), key=lambda r: (r["time"], r["quarantined_as"]))


# One claim is decided and carried out at a time (under the store lock, a crashed one finished first), so the
# next free name is free for the claim being decided.


def _next_batch_name(store: Path) -> str:
    numbers = [int(m.group(1)) for p in batch_paths(store) if (m := BATCH_NAME.fullmatch(p.name))]
    return f"batch-{max(numbers, default=0) + 1:06d}.csv"


def _free_quarantine_name(store: Path, name: str) -> str:
    folder = Path(store) / QUARANTINE
    stem, suffix = os.path.splitext(name)
    attempt = 0
    while True:
        candidate = name if attempt == 0 else f"{stem}.{attempt}{suffix}"
        taken = os.path.lexists(folder / candidate) or os.path.lexists(folder / f"{candidate}{REASON_SUFFIX}")
        if not taken:
            return candidate
        attempt += 1


def _claim(store: Path, entry: Path) -> Path | None:
    """Take ``entry`` out of incoming/ by renaming it into a new claim folder (None: it is gone already)."""
    claim = Path(store) / CLAIMS / f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    claim.mkdir(parents=True)
    _write_json_atomic(claim / "origin.json", {"file": entry.name, "claimed": _now()})
    _step("claim-opened")
    try:
        os.rename(entry, claim / "data")  # atomic: this file is now ours, and nobody else's
    except FileNotFoundError:
        shutil.rmtree(claim)
        return None
    _step("claimed")
    return claim


def _quarantine_decision(store: Path, site: str, name: str, problems: list[str], **extra) -> dict:
    target = _free_quarantine_name(store, name)
    reason = {"site": site, "file": name, "quarantined_as": target, "problem": "; ".join(problems),
              "problems": problems, "time": _now(), **extra}
    return {"action": "quarantine", "file": name, "quarantined_as": target, "reason": reason}


def _decide(store: Path, site: str, claim: Path, max_nan_share: float, max_file_bytes: int) -> dict:
    """What becomes of a claimed entry; nothing is placed yet (``_carry_out`` does that)."""
    name = _read_json(claim / "origin.json")["file"]
    data_path = claim / "data"
    info = os.lstat(data_path)
    if not stat.S_ISREG(info.st_mode):
        what = _kind(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            what += f" to {os.readlink(data_path)!r}"
        return _quarantine_decision(
            store, site, name, [f"not a regular file: {what}; refused without following or reading it"]
        )
    too_big = f"file exceeds the size cap of {max_file_bytes} bytes; quarantined without parsing it"
    if info.st_size > max_file_bytes:
        return _quarantine_decision(store, site, name, [f"{too_big} ({info.st_size} bytes)"])
    try:
        data = _read_regular(data_path, max_file_bytes)
    except OSError as exc:
        return _quarantine_decision(store, site, name, [f"unreadable file: {exc.__class__.__name__}: {exc}"])
    if len(data) > max_file_bytes:  # it grew after it was claimed
        return _quarantine_decision(store, site, name, [too_big])
    digest = _sha256(data)
    if (first := ledger_lookup(store, digest)) is not None:
        problem = (f"duplicate: the same content (sha256 {digest[:16]}…) was already accepted as {first['batch']} "
                   f"(delivered as {first['file']})")
        return _quarantine_decision(store, site, name, [problem], sha256=digest, duplicate_of=first["batch"])
    frame, unreadable = _parse(data)
    if frame is None:
        return _quarantine_decision(store, site, name, [f"unreadable file: {unreadable}"], sha256=digest)
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
        return _quarantine_decision(store, site, name, problems, sha256=digest)
    batch = _next_batch_name(store)
    if not incomplete.any():
        return {"action": "accept", "file": name, "sha256": digest, "batch": batch, "rows": len(frame)}
    # Accept the complete rows; keep the original file, every row of it, in quarantine.
    complete = frame[~incomplete].to_csv(index=False).encode()
    tmp = claim / ".complete.csv.tmp"
    tmp.write_bytes(complete)
    os.replace(tmp, claim / "complete.csv")
    held = _lines(incomplete.to_numpy())
    note = f"{len(held)} row(s) with missing values held back (CSV lines {held[:20]}); the rest accepted"
    decision = _quarantine_decision(
        store, site, name, [note], sha256=digest, accepted_as=batch, held_back_lines=held
    )
    return {**decision, "action": "split", "sha256": digest, "complete_sha256": _sha256(complete), "batch": batch,
            "rows": int((~incomplete).sum())}


def _place_batch(store: Path, claim: Path, decision: dict) -> dict:
    source = claim / ("data" if decision["action"] == "accept" else "complete.csv")
    folder = Path(store) / BATCHES
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        target = folder / decision["batch"]
        try:
            _place(source, target)
            return decision
        except FileExistsError:
            if _same_content(source, target):
                return decision  # placed before a crash
            # Someone else's batch took the number after the decision (a writer not holding the lock): renumber.
            decision = {**decision, "batch": _next_batch_name(store)}
            if "reason" in decision:
                decision["reason"] = {**decision["reason"], "accepted_as": decision["batch"]}
            _write_json_atomic(claim / "decision.json", decision)


def _place_quarantine(store: Path, claim: Path, decision: dict) -> dict:
    source = claim / "data"
    folder = Path(store) / QUARANTINE
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        target = folder / decision["quarantined_as"]
        if not os.path.lexists(source):
            return decision  # moved there before a crash (only entries that are not regular files are moved)
        if os.path.lexists(target):
            if source.is_file() and not source.is_symlink() and _same_content(source, target):
                return decision
            name = _free_quarantine_name(store, decision["file"])
            decision = {**decision, "quarantined_as": name, "reason": {**decision["reason"], "quarantined_as": name}}
            _write_json_atomic(claim / "decision.json", decision)
            continue
        if stat.S_ISREG(os.lstat(source).st_mode):
            try:
                _place(source, target)
            except FileExistsError:
                continue
        else:  # a link, a FIFO, a folder: moved as it is, never opened (nothing else writes quarantine/)
            os.rename(source, target)
        return decision


def _carry_out(store: Path, claim: Path, decision: dict, recovered: bool) -> dict:
    """Do what the decision says; every step may be repeated after a crash without doing anything twice."""
    out: dict[str, list] = {"accepted": [], "quarantined": []}
    flag = {"recovered": True} if recovered else {}
    if decision["action"] in ("accept", "split"):
        decision = _place_batch(store, claim, decision)
        _step("batch-placed")
        held = decision["sha256"] if decision["action"] == "accept" else decision["complete_sha256"]
        entry = {"batch": decision["batch"], "batch_sha256": held, "file": decision["file"], "rows": decision["rows"],
                 "time": _now(), "source": "incoming"}
        _ledger_put(store, {"sha256": decision["sha256"], **entry, "partial": decision["action"] == "split"})
        if decision["action"] == "split":
            _ledger_put(store, {"sha256": decision["complete_sha256"], **entry, "partial": True})
        _step("ledgered")
        out["accepted"].append({"file": decision["file"], "batch": decision["batch"], "rows": decision["rows"], **flag})
    if decision["action"] in ("quarantine", "split"):
        decision = _place_quarantine(store, claim, decision)
        _step("quarantine-placed")
        target = Path(store) / QUARANTINE / decision["quarantined_as"]
        reason_file = target.with_name(target.name + REASON_SUFFIX)
        draft = claim / "reason.json"
        _write_json_atomic(draft, decision["reason"])
        try:
            _place(draft, reason_file)  # a reason is never overwritten either
        except FileExistsError:
            pass  # written before a crash: the name was free when this claim was decided
        _step("reason-written")
        out["quarantined"].append({"file": decision["file"], "reason": disclosed(decision["reason"]["problem"]),
                                   "path": str(target), "reason_file": str(reason_file), **flag})
    _release(claim)
    return out


def _release(claim: Path) -> None:
    done = claim.with_name(claim.name + ".done")
    os.rename(claim, done)  # one atomic step: from here on the claim is finished, whatever remains of it
    shutil.rmtree(done)


def _process_claim(store: Path, site: str, claim: Path, max_nan_share: float, max_file_bytes: int,
                   recovered: bool = False) -> dict:
    decision = _read_json(claim / "decision.json")
    if decision is None:
        decision = _decide(store, site, claim, max_nan_share, max_file_bytes)
        _write_json_atomic(claim / "decision.json", decision)  # written ahead: from here on, only carried out
        _step("decided")
    return _carry_out(store, claim, decision, recovered)


def _recover_claims(store: Path, site: str, max_nan_share: float, max_file_bytes: int) -> dict:
    """Finish what a crashed acceptance left in claims/ (or roll back a claim that holds no file yet)."""
    out: dict[str, list] = {"accepted": [], "quarantined": []}
    folder = Path(store) / CLAIMS
    if not folder.is_dir():
        return out
    for claim in sorted(folder.iterdir()):
        if claim.name.endswith(".done"):
            shutil.rmtree(claim)  # released before the crash
            continue
        has_data = os.path.lexists(claim / "data")
        if not (claim / "origin.json").exists() or (not has_data and not (claim / "decision.json").exists()):
            shutil.rmtree(claim)  # the claim never took its file: it is still in incoming/
            continue
        result = _process_claim(store, site, claim, max_nan_share, max_file_bytes, recovered=True)
        out["accepted"] += result["accepted"]
        out["quarantined"] += result["quarantined"]
    return out


def _accept_locked(store: Path, site: str, max_nan_share: float, max_file_bytes: int) -> dict:
    root = Path(store)
    incoming = root / INCOMING
    if incoming.is_symlink() or (os.path.lexists(incoming) and not incoming.is_dir()):
        raise SiteDataError(site, "incoming/ is not a folder of this store (a symbolic link is never followed)",
                            incoming)
    result = _recover_claims(root, site, max_nan_share, max_file_bytes)
    _backfill_ledger(root)
    for entry in incoming_paths(root):
        claim = _claim(root, entry)
        if claim is None:
            continue
        done = _process_claim(root, site, claim, max_nan_share, max_file_bytes)
        result["accepted"] += done["accepted"]
        result["quarantined"] += done["quarantined"]
    return {"site": site, **result}


def _check_limits(max_nan_share: float, max_file_bytes: int) -> None:
    if not 0.0 <= max_nan_share <= 1.0:
        raise ValueError(f"max_nan_share must be within [0, 1], got {max_nan_share}")
    if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be a whole number of bytes >= 1, got {max_file_bytes!r}")


def accept_incoming(
    store: Path, site: str, max_nan_share: float = DEFAULT_MAX_NAN_SHARE,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> dict:
    """Validate every entry of the store's incoming/ folder; accept it as the next batch or quarantine it.

    An entry is quarantined, with ``<file>.reason.json`` beside it, when it is not a regular file (never
    followed or opened), is larger than ``max_file_bytes`` (not parsed), holds content already accepted (the
    reason names the batch), cannot be read, has missing or unexpected columns, no rows, values of the wrong
    type, non-finite or physically impossible readings (column, row count and example CSV lines named), or
    more rows with missing values than ``max_nan_share`` allows. Within that share, the complete rows are
    accepted as the next batch and the original file (all rows) is quarantined with the numbers of the rows
    that were held back. An acceptance that a crash interrupted is finished first (its items say
    ``"recovered": true``).
    Returns ``{"site", "accepted": [{"file", "batch", "rows"}], "quarantined": [{"file", "reason", ...}]}``.
    """
    _check_limits(max_nan_share, max_file_bytes)
    if not Path(store).is_dir():
        return {"site": site, "accepted": [], "quarantined": []}
    with store_lock(store):
        return _accept_locked(Path(store), site, max_nan_share, max_file_bytes)


def _write_new(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    try:
        _place(tmp, path)  # never replaces a file that is already there
    finally:
        tmp.unlink()


# --- collect: generate the next batch, once per run ------------------------------------------------------------------


def _run_key(run_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id)[:80]
    return f"run-{readable}-{_sha256(run_id.encode())[:10]}"


def _outcome(store: Path, name: str) -> dict:
    """What became of incoming file ``name``: its batch (from the ledger) and its quarantine entries."""
    accepted = [
        {"file": name, "batch": e["batch"], "rows": e["rows"]}
        for e in _ledger_entries(store)
        if e.get("file") == name and e.get("source") == "incoming"
    ]
    accepted = list({a["batch"]: a for a in accepted}.values())  # a split batch has two hashes, one batch
    folder = Path(store) / QUARANTINE
    held = [
        {"file": name, "reason": disclosed(r["problem"]), "path": str(folder / r["quarantined_as"]),
         "reason_file": str(folder / (r["quarantined_as"] + REASON_SUFFIX))}
        for r in quarantined(store) if r["file"] == name
    ]
    return {"accepted": accepted, "quarantined": held}


def _complete_collection(store: Path, record: dict) -> bool:
    """Finish a collection that a crash interrupted: False (rolled back) when its file was never written.

    A written file is collected like any other (it may be waiting, or taken already); the generator state is
    moved past it once, so the next batch continues it instead of drawing the same rows again.
    """
    name = record["generated"]
    outcome = _outcome(store, name)
    if not (outcome["accepted"] or outcome["quarantined"] or os.path.lexists(store / INCOMING / name)):
        with contextlib.suppress(FileNotFoundError):
            (store / INCOMING / f".{name}.tmp").unlink()  # our own half-written file, never visible
        return False
    if _read_json(store / "generator_state.json") == record["state_before"]:  # not advanced yet
        _save_state(store, record["state_after"])
    return True


def _pending_collections(store: Path) -> list[tuple[Path, dict]]:
    folder = store / COLLECTIONS
    if not folder.is_dir():
        return []
    return [(p, r) for p in sorted(folder.glob("*.pending.json")) if (r := _read_json(p))]


def _finish_record(path: Path, record: dict, outcome: dict) -> None:
    done = path.with_name(path.name.replace(".pending.json", ".json"))
    if record.get("run_id") is None:
        path.unlink()  # nobody will ask for it again
        return
    _write_json_atomic(done, {**record, "result": outcome, "finished": _now()})
    path.unlink()


def collect_batch(
    store: Path,
    profile: SiteProfile,
    rows: int | None = None,
    max_nan_share: float = DEFAULT_MAX_NAN_SHARE,
    run_id: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> dict:
    """Generate the site's next batch into incoming/ and run collection (``accept_incoming``) on it.

    Files already waiting in incoming/ are collected first, so the new batch's number is the one its drift
    schedule was drawn for. With ``run_id`` (the Airflow run), a run that already collected (a retried task)
    generates nothing and answers with the batch it made before (``"reused": true``). A collection that a crash
    interrupted, of any run, is finished first: its batch is made exactly once and the generator state moves
    past it once. Returns accept_incoming's result plus ``generated`` (the incoming file name) and ``run_id``.
    """
    _check_limits(max_nan_share, max_file_bytes)
    root = Path(store)
    site = profile.name
    with store_lock(root):
        results = [_accept_locked(root, site, max_nan_share, max_file_bytes)]
        pending = _pending_collections(root)
        finished = []
        for path, record in pending:
            if _complete_collection(root, record):
                finished.append((path, record))
            else:
                path.unlink()  # planned, never written: as if it had not started (a retry plans it again)
        if finished:
            results.append(_accept_locked(root, site, max_nan_share, max_file_bytes))
            for path, record in finished:
                _finish_record(path, record, _outcome(root, record["generated"]))

        def merged(own: dict, **extra) -> dict:
            accepted = [a for r in results for a in r["accepted"]]
            held = [q for r in results for q in r["quarantined"]]
            accepted += [a for a in own["accepted"] if a["batch"] not in {x["batch"] for x in accepted}]
            held += [q for q in own["quarantined"] if q["path"] not in {x["path"] for x in held}]
            return {"site": site, "accepted": accepted, "quarantined": held, "run_id": run_id, **extra}

        key = _run_key(run_id) if run_id is not None else None
        if key is not None and (record := _read_json(root / COLLECTIONS / f"{key}.json")) is not None:
            return merged(record["result"], generated=record["generated"], reused=True)

        state_before = _read_json(root / "generator_state.json")
        index = len(batch_paths(root)) + 1
        frame, state = generate_batch(profile, index, _load_state(root), rows)
        if key is None:
            key = f"auto-{time.time_ns():020d}-{secrets.token_hex(4)}"
            name = f"generated-{index:06d}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.csv"
        else:
            name = f"generated-{index:06d}-{key}.csv"
        record = {"run_id": run_id, "generated": name, "index": index, "rows": rows,
                  "state_before": state_before, "state_after": asdict(state), "planned": _now()}
        (root / COLLECTIONS).mkdir(parents=True, exist_ok=True)
        record_path = root / COLLECTIONS / f"{key}.pending.json"
        _write_json_atomic(record_path, record)  # planned ahead: a crash from here on is finished by the next run
        _step("collect-planned")
        (root / INCOMING).mkdir(parents=True, exist_ok=True)
        _write_new(root / INCOMING / name, frame)
        _step("collect-written")
        _save_state(root, state)
        _step("collect-state-saved")
        results.append(_accept_locked(root, site, max_nan_share, max_file_bytes))
        _step("collect-accepted")
        own = _outcome(root, name)
        _finish_record(record_path, record, own)
        return merged(own, generated=name, reused=False)
