"""Private files: the one way MLEDGE writes a secret, a key or a registry to disk.

Atomic (a reader sees the old file or the new one, never half), private from the first byte (``mkstemp`` creates
the file 0600 before anything is written), and never left behind as a temporary file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), created with its parents when missing."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically; the file ends with ``mode`` (0600 unless a public key says 0644)."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tighten(path: Path, mode: int = 0o600) -> None:
    """Take back access that someone granted to others, rather than keep serving a readable secret."""
    if path.stat().st_mode & 0o077 & ~mode:
        os.chmod(path, mode)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created 0600), so that two processes never generate a secret twice."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
