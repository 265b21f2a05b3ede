"""One component of the local stack as an operating-system process: started, checked and stopped by its PID.

Each component runs in its own process group (a session of its own), as its own Unix user when the stack runs as
root (mledge/ops/identities.py), with umask 077 and exactly the environment its definition lists. Its PID is kept
in ``<home>/run/<name>.pid`` and its output in ``<home>/logs/<name>.log``. Stopping signals exactly that process
group, so nothing a component started (gunicorn workers, ClientApp processes, task processes) is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mledge.ops.identities import Account


class StackError(RuntimeError):
    """A component did not start or is not healthy; the message says which and shows its log's end."""


@dataclass
class Component:
    name: str
    argv: list[str]
    env: Callable[[], dict[str, str]]  # built when the component starts (a site's needs nothing of the platform)
    healthy: Callable[[], bool]
    home: Path  # its working directory, and the only home it knows of (MLEDGE_HOME)
    side: str = "platform"  # "platform" or "site"
    site: str | None = None
    account: Account | None = None  # run as this Unix user (when the stack runs as root)
    stop_signal: int = signal.SIGTERM
    extra: dict = field(default_factory=dict)
    _environment: dict[str, str] | None = field(default=None, repr=False)

    def environment(self) -> dict[str, str]:
        """Its environment, built once (building it may write the secrets it names)."""
        if self._environment is None:
            self._environment = self.env()
        return self._environment


def http_ok(url: str, context: Callable[[], object] | None = None) -> Callable[[], bool]:
    """A health check: ``url`` answers 200 (over TLS verified by the SSL context ``context()`` makes, if given)."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context() if context else None) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


def port_open(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((host, port)) == 0

    return check


class Processes:
    """The PID and log files of one stack (``run_dir``, ``log_dir``): start, find, stop by PID."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir, self.log_dir = run_dir, log_dir

    def pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def running_pid(self, name: str) -> int | None:
        path = self.pidfile(name)
        if not path.exists():
            return None
        pid = int(path.read_text().strip() or 0)
        return pid if pid and alive(pid) else None

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def start(self, component: Component) -> tuple[int, bool]:
        """Start a component unless it already runs; returns (pid, started_now)."""
        pid = self.running_pid(component.name)
        if pid:
            return pid, False
        for folder in (self.log_dir, self.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        account = component.account
        with open(self.log(component.name), "ab") as log:
            process = subprocess.Popen(
                component.argv,
                env=component.environment(),
                cwd=component.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole, by this PID
                umask=0o077,  # what it writes is its own
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )
        self.pidfile(component.name).write_text(str(process.pid))
        return process.pid, True

    def wait_healthy(
        self, wanted: list[Component], timeout: float, why_exited: Callable[[str], str] = lambda name: ""
    ) -> None:
        deadline = time.monotonic() + timeout
        pending = list(wanted)
        while pending:
            for component in list(pending):
                if not self.running_pid(component.name):
                    raise StackError(
                        f"{component.name} exited during start-up{why_exited(component.name)}; end of "
                        f"{self.log(component.name)}:\n" + self.log_tail(component.name)
                    )
                if component.healthy():
                    pending.remove(component)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise StackError(
                    f"not healthy within {timeout:.0f}s: {names}; end of its log:\n" + self.log_tail(pending[0].name)
                )
            if pending:
                time.sleep(0.5)

    def stop(self, name: str, sig: int = signal.SIGTERM, grace: float = 20.0) -> bool:
        """Stop a component's process group by its recorded PID; returns whether it was running."""
        path = self.pidfile(name)
        pid = self.running_pid(name)
        if pid:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if group_alive(pid):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        path.unlink(missing_ok=True)
        return pid is not None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process remains in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(alive(p) for p in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: process group
            members.append(int(stat.parent.name))
    return members


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
