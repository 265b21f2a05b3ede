"""The stack's trainer per site (mledge/ops/components.py): defined next to the SuperNode, at the site, and started,
checked and stopped by its PID like every other component (mledge/ops/processes.py)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mledge.onsite.trainer_client import TRAINER_KEY, socket_path, status
from mledge.ops import components as defs
from mledge.ops.processes import Processes, alive
from mledge.ops.settings import Settings

HEALTHCHECK = Path(__file__).resolve().parents[3] / "docker" / "healthcheck.py"


@pytest.fixture()
def settings(monkeypatch):
    """A deployment in a short folder: a Unix socket's path must stay under 108 bytes."""
    home = Path(tempfile.mkdtemp(prefix="mledge-s-", dir="/tmp"))
    monkeypatch.setenv("MLEDGE_HOME", str(home))
    for key in ("MLEDGE_PLATFORM_HOME", "MLEDGE_DATA_ROOT", "MLEDGE_SIMULATION_SITES"):
        monkeypatch.delenv(key, raising=False)
    yield Settings(home=home, airflow_db_url=None)
    shutil.rmtree(home, ignore_errors=True)


def test_each_site_has_its_trainer_at_the_site_before_its_supernode(settings):
    found = defs.components(settings, settings.logs)
    names = [c.name for c in found]
    for site in settings.sites:
        trainer = found[names.index(f"trainer-{site}")]
        assert names.index(f"trainer-{site}") < names.index(f"supernode-{site}")
        assert (trainer.side, trainer.site, trainer.home) == ("site", site, settings.site_home(site))
        assert trainer.argv[1:] == ["sites", "trainer", "--site", site]
        assert trainer.argv[0] == str(settings.bin("workload", "mledge"))
        env = trainer.environment()
        # The site's allow-listed environment, nothing of the platform, and not even the site's MLflow identity.
        site_env = defs.site_env(settings, site)
        assert "MLFLOW_TRACKING_PASSWORD" in site_env
        assert env == {k: v for k, v in site_env.items() if k not in defs.TRAINER_WITHOUT}
        assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"} & set(env)
        assert not set(env) & set(defs.PLATFORM_ONLY)
        # Its SuperNode's ClientApp is told where the trainer listens: inside the site's own home.
        config = dict(part.split("=", 1) for part in shlex.split(defs.node_config(settings, site)))
        assert config[TRAINER_KEY] == str(socket_path(settings.site_home(site)))
        assert Path(config[TRAINER_KEY]).is_relative_to(settings.site_home(site))
        assert config["site"] == site and config["data-dir"] == str(settings.site_home(site))


def _healthcheck(settings: Settings, name: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "MLEDGE_HOME": str(settings.home)}
    return subprocess.run([sys.executable, str(HEALTHCHECK), "component", name], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_stack_starts_checks_and_stops_a_trainer_by_its_pid(settings):
    site = "plant_b"
    trainer = {c.name: c for c in defs.components(settings, settings.logs)}[f"trainer-{site}"]
    settings.site_home(site).mkdir(parents=True)
    procs = Processes(settings.run_dir, settings.logs)
    assert not trainer.healthy()
    unhealthy = _healthcheck(settings, trainer.name)
    assert unhealthy.returncode == 1 and "does not answer" in unhealthy.stdout + unhealthy.stderr
    pid, started = procs.start(trainer)
    try:
        assert started
        procs.wait_healthy([trainer], timeout=300)
        answer = status(socket_path(settings.site_home(site)), site=site)
        assert (answer["site"], answer["ready"], answer["pid"]) == (site, True, pid)
        assert procs.running_pid(trainer.name) == pid
        healthy = _healthcheck(settings, trainer.name)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    finally:
        stopped = procs.stop(trainer.name, trainer.stop_signal)
    assert stopped and not alive(pid)
    assert procs.running_pid(trainer.name) is None
    assert not socket_path(settings.site_home(site)).exists()  # it cleaned up after itself
    assert _healthcheck(settings, trainer.name).returncode == 1
