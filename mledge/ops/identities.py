"""Who each process of the local stack runs as, and who may open which folder.

Run as root (CI and our machines do), the stack enforces the trust boundary with the operating system: the
platform's processes run as the Unix user ``mledge-platform`` and each site's processes as ``mledge-<site>``;
the platform's home and each site's home are 0700 and owned by their user, so a central process that tries to
open a site's batch gets EACCES, and one site cannot read another's. Run as a normal user, the stack keeps the
separate homes (the central processes are still given a home with no site store) but cannot change ownership:
it says so, and file permissions between sites and platform are then not enforced.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
PLATFORM_USER = "mledge-platform"
PREFIX = "mledge-"
NOT_ENFORCED = (
    "running as a normal user: the platform and each site still get homes of their own, but file permissions "
    "between them are NOT enforced (run the stack as root to give each its own Unix user)"
)


def site_user(site: str) -> str:
    return f"{PREFIX}{site}"[:32]  # Linux user names are at most 32 characters


def enforced() -> bool:
    """Whether this process can run components as other users (it is root)."""
    return os.geteuid() == 0


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def ensure_user(name: str) -> Account:
    """The Unix account ``name``, created as a system user without login shell or home when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        done = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True,
        )
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise RuntimeError(f"cannot create the Unix user {name!r}: {done.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def own(path: Path, account: Account | None, mode: int = 0o700) -> None:
    """``path`` (a folder) belongs to ``account``, recursively, only its owner may enter it, and nothing in it
    is open to group or others (what a process with a looser umask wrote before, a database say, included)."""
    path.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(path):
        for entry in (Path(root), *(Path(root) / name for name in (*dirs, *files))):
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue
            if account is not None and (info.st_uid, info.st_gid) != (account.uid, account.gid):
                os.chown(entry, account.uid, account.gid, follow_symlinks=False)
            if info.st_mode & 0o077:
                os.chmod(entry, stat.S_IMODE(info.st_mode) & ~0o077)
    os.chmod(path, mode)


def traversable(paths: Iterable[Path]) -> None:
    """Folders other users must pass through (not list or read) to reach their own home below them."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, os.stat(path).st_mode | 0o111)


def reachable_by_others(path: Path) -> str | None:
    """Why a program at ``path`` cannot be run by another user (a folder on its way they may not pass, or the
    file itself), or None. A Python under /root (pyenv's, say) is the usual reason."""
    real = Path(os.path.realpath(path))
    for folder in reversed(real.parents):
        if not os.stat(folder).st_mode & 0o001:
            return f"{real}: other users may not pass {folder} (mode {oct(os.stat(folder).st_mode & 0o777)})"
    if not os.stat(real).st_mode & 0o005:
        return f"{real}: other users may not run it"
    return None


def group_name(account: Account) -> str:
    return grp.getgrgid(account.gid).gr_name
