"""A real Flower federation on this machine, for the benchmarks: a SuperLink, one SuperNode per site and, when
asked, each site's trainer (mledge/onsite/trainer.py), every one its own process, started and stopped by its PID
(mledge/ops/processes.py), running the project's Flower App (fl/flower_app) as `mledge fl start` submits it.

What differs from `mledge stack up`: no TLS, no SuperNode authentication and no Fleet gateway (the SuperNodes reach
the SuperLink on loopback; the notes measured no CPU cost for TLS), no Unix users, and MLflow as a SQLite file the
ServerApp writes itself instead of a tracking server. The ClientApp, its trainers and the ServerApp are the real ones.

Per-round wall time comes from the ServerApp's own outbox (fl/outbox.py): each round logs its aggregation weights
with a timestamp right after it aggregated, so round r took ts(r) - ts(r-1).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fl.outbox import outbox_dir
from fl.runs import FLOWER_APP, await_run, submit_run, wait_for_nodes
from mledge.contracts import EVIDENCE_PATH
from mledge.onsite.trainer_client import TRAINER_KEY, ready, socket_path
from mledge.ops.components import SUPEREXEC_POLL_S
from mledge.ops.processes import Component, Processes, port_open

CONNECTION = "bench"
BIN = Path(sys.executable).parent
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "FLWR_TELEMETRY_ENABLED": "0"}


def free_ports(count: int) -> list[int]:
    """``count`` ports nothing listens on now (the kernel's choice; held open together so they differ)."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def memory_kb(pid: int) -> dict[str, int]:
    """Resident and proportional set size of one process (kB): PSS splits shared pages (torch's libraries) fairly."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Dirty"):
                values[key.lower()] = int(rest.split()[0])
    except OSError:
        return {}
    return values


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of a process group: its live members' own and their reaped children's (a SuperNode's
    ClientApp processes, a SuperLink's ServerApp). The load of other work on the machine inflates wall time much
    more than CPU time, so this is the steadier measure of what a round costs."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class RunTimes:
    run_id: str
    status: str
    round_ends: list[float]  # epoch seconds at which round 1..R aggregated
    wall_s: float  # submission to finished
    compute_s: dict[str, float] = field(default_factory=dict)  # per site, every message of the run
    cpu_s: dict[str, float] = field(default_factory=dict)  # per component (its process group), during the run

    @property
    def round_s(self) -> list[float]:
        """Seconds of rounds 2..R (round 1 also pays for the ServerApp's start and MLflow's first write)."""
        return [round(b - a, 3) for a, b in zip(self.round_ends, self.round_ends[1:], strict=False)]

    @property
    def median_round_s(self) -> float | None:
        return round(statistics.median(self.round_s), 3) if self.round_s else None


def round_ends(folder: Path) -> list[float]:
    ends: dict[int, float] = {}
    path = folder / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        if any(k.endswith("/aggregation_weight") for k in entry["metrics"]):
            ends[entry["step"]] = max(ends.get(entry["step"], 0.0), entry["ts"] / 1000.0)
    return [ends[r] for r in sorted(ends)]


def _compute(folder: Path) -> dict[str, float]:
    path = folder / "documents.json"
    if not path.exists():
        return {}
    evidence = json.loads(path.read_text()).get(EVIDENCE_PATH, {})
    return {site: round(float(s), 3) for site, s in (evidence.get("compute_seconds") or {}).items()}


class Federation:
    """``sites``: site name -> its store (made beforehand). ``trainers``: each site's ClientApp forwards to the
    site's trainer; otherwise it trains in its own process, as before the trainers."""

    def __init__(self, root: Path, sites: dict[str, Path], *, trainers: bool, name: str) -> None:
        self.root, self.sites, self.trainers, self.name = Path(root), dict(sites), trainers, name
        self.platform = self.root / name / "platform"
        self.procs = Processes(self.root / name / "run", self.root / name / "logs")
        self.port, *self.node_ports = free_ports(1 + len(sites))
        self.flwr_home = self.platform / "flwr"
        self.components: list[Component] = []
        self._flwr_home_before = os.environ.get("FLWR_HOME")  # put back on stop: the `flwr` CLI reads it

    # --- environments ------------------------------------------------------------------------------------------

    def _env(self, home: Path, **extra: str) -> dict[str, str]:
        keep = {k: os.environ[k] for k in ("LANG", "LC_ALL", "TZ") if k in os.environ}
        return {**keep, "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                "MLEDGE_HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", **TELEMETRY_OFF, **extra}

    def site_env(self, home: Path) -> dict[str, str]:
        """As the stack's site processes (mledge.ops.components.site_runtime): a share of the cores each, and
        the SuperExec's poll interval; the same for both ways of training."""
        threads = max(1, (os.cpu_count() or 1) // len(self.sites))
        return self._env(home, OMP_NUM_THREADS=str(threads), FLWR_SUPEREXEC_TASK_POLL_INTERVAL=SUPEREXEC_POLL_S)

    def platform_env(self) -> dict[str, str]:
        return self._env(
            self.platform,
            FLWR_HOME=str(self.flwr_home),
            MLFLOW_TRACKING_URI=f"sqlite:///{self.platform / 'mlflow.db'}",
            MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        )

    def node_config(self, site: str) -> str:
        store = self.sites[site]
        config = f"site='{site}' data-dir='{store}'"
        return config + (f" {TRAINER_KEY}='{socket_path(store)}'" if self.trainers else "")

    # --- start, run, stop ----------------------------------------------------------------------------------

    def _prepare_platform(self) -> None:
        import mlflow

        from mledge.db import migrate

        (self.platform / "flower").mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        migrate(f"sqlite:///{self.platform / 'platform.db'}")
        # MLflow's schema made once, before the ServerApp writes (first creation on SQLite can race).
        mlflow.MlflowClient(f"sqlite:///{self.platform / 'mlflow.db'}").search_experiments()

    def start(self, timeout: float = 900.0, wave: int = 6, before_wave: Callable[[], None] | None = None) -> None:
        """The SuperLink, then the trainers (``wave`` at a time: each warms torch up), then the SuperNodes."""
        self._prepare_platform()
        superlink = Component(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             "--database", str(self.platform / "flower" / "superlink.db"), "--host", "127.0.0.1",
             "--port", str(self.port)],
            self.platform_env, port_open(self.port), home=self.platform,
        )
        self._launch([superlink], timeout)
        if self.trainers:
            trainers = [
                Component(
                    f"trainer-{site}",
                    [str(BIN / "mledge"), "sites", "trainer", "--site", site, "--store", str(store)],
                    partial(self.site_env, store), partial(ready, socket_path(store), site), home=store,
                    side="site", site=site,
                )
                for site, store in self.sites.items()
            ]
            for i in range(0, len(trainers), wave):
                if before_wave is not None:  # e.g. refuses to go on when the machine runs short of memory
                    before_wave()
                self._launch(trainers[i : i + wave], timeout)
        supernodes = [
            Component(
                f"supernode-{site}",
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                 "--node-config", self.node_config(site), "--host", "127.0.0.1", "--port", str(port)],
                partial(self.site_env, store), port_open(port), home=store, side="site", site=site,
            )
            for (site, store), port in zip(self.sites.items(), self.node_ports, strict=True)
        ]
        self._launch(supernodes, timeout)
        os.environ["FLWR_HOME"] = str(self.flwr_home)
        wait_for_nodes(len(self.sites), timeout, CONNECTION, str(BIN / "flwr"), poll_s=2.0)

    def _launch(self, group: list[Component], timeout: float) -> None:
        self.components += group
        for component in group:
            self.procs.start(component)
        self.procs.wait_healthy(group, timeout)

    def run(self, run_config: dict[str, Any], timeout: float = 3600.0) -> RunTimes:
        os.environ["FLWR_HOME"] = str(self.flwr_home)
        flwr = str(BIN / "flwr")
        cpu_before = self.cpu()
        started = time.time()
        run_id = submit_run(run_config, CONNECTION, app_dir=FLOWER_APP, flwr_bin=flwr)
        # Seldom: each `flwr ls` is a Python process of its own, CPU the rounds would otherwise have.
        info = await_run(run_id, timeout, CONNECTION, flwr, poll_s=10.0)
        wall = time.time() - started
        time.sleep(2.0)  # the last ClientApp processes exit and are reaped: their CPU is counted
        cpu = {name: round(s - cpu_before.get(name, 0.0), 2) for name, s in self.cpu().items()}
        folder = outbox_dir(self.platform, run_id)
        return RunTimes(run_id, info["status"], round_ends(folder), round(wall, 2), _compute(folder), cpu)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per running component, with everything it started."""
        found = {}
        for component in self.components:
            pid = self.procs.running_pid(component.name)
            if pid:
                found[component.name] = round(group_cpu_s(pid), 2)
        return found

    def memory(self) -> dict[str, dict[str, int]]:
        """kB per running component (its main process)."""
        found = {}
        for component in self.components:
            pid = self.procs.running_pid(component.name)
            if pid:
                found[component.name] = memory_kb(pid)
        return found

    def stop(self) -> None:
        for component in reversed(self.components):  # SuperNodes, trainers, then the SuperLink
            self.procs.stop(component.name, component.stop_signal, grace=30)
        self.components = []
        if self._flwr_home_before is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = self._flwr_home_before

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
