"""The local stack's process handling: one process group per component, stopped by its recorded PID."""

import sys
import time

import pytest

from mledge.ops import components as defs
from mledge.ops.processes import Component, Processes, StackError, group_alive
from mledge.ops.settings import Settings


@pytest.fixture()
def settings(tmp_path):
    return Settings(home=tmp_path, airflow_db_url=None)


@pytest.fixture()
def procs(settings):
    return Processes(settings.run_dir, settings.logs)


def component(name, script, home, healthy=lambda: True):
    return Component(name, [sys.executable, "-c", script], lambda: {"PATH": "/usr/bin:/bin"}, healthy, home=home)


def test_stop_ends_the_component_and_everything_it_started(settings, procs):
    # The component starts a grandchild, as gunicorn starts workers and a SuperNode starts ClientApps.
    parent = component(
        "parent",
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "time.sleep(300)\n",
        settings.home,
    )
    pid, started = procs.start(parent)
    assert started
    procs.wait_healthy([parent], timeout=30)
    assert procs.running_pid("parent") == pid
    assert procs.stop("parent", grace=10)
    assert not group_alive(pid)
    assert procs.running_pid("parent") is None
    assert not (settings.run_dir / "parent.pid").exists()


def test_start_reuses_a_running_component(settings, procs):
    sleeper = component("sleeper", "import time; time.sleep(300)", settings.home)
    first, started = procs.start(sleeper)
    try:
        again, started_again = procs.start(sleeper)
        assert (again, started, started_again) == (first, True, False)
    finally:
        procs.stop("sleeper")


def test_a_component_runs_with_umask_077_in_its_own_home(settings, procs, tmp_path):
    home = tmp_path / "component-home"
    home.mkdir()
    writer = component("writer", "import os, time; open('made-here', 'w').close(); time.sleep(300)", home)
    procs.start(writer)
    try:
        made = home / "made-here"
        deadline = time.monotonic() + 30
        while not made.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert made.stat().st_mode & 0o077 == 0  # nothing it writes is readable by others
    finally:
        procs.stop("writer")


def test_a_component_that_dies_at_start_is_reported_with_its_log(settings, procs):
    broken = component(
        "broken", "import sys; print('cannot bind port 5000'); sys.exit(3)", settings.home, healthy=lambda: False
    )
    procs.start(broken)
    with pytest.raises(StackError, match="broken exited during start-up") as failure:
        procs.wait_healthy([broken], timeout=30)
    assert "cannot bind port 5000" in str(failure.value)


def test_stop_of_a_component_that_is_not_running_is_a_no_op(procs):
    assert procs.stop("never-started") is False


def test_secrets_are_generated_once_and_private(settings):
    first = defs.ensure_secret_env(settings)
    assert defs.ensure_secret_env(settings) == first
    assert len(first["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    mode = (settings.secrets / "airflow.env").stat().st_mode & 0o777
    assert mode == 0o600


def test_airflow_uses_sqlite_by_default_and_a_database_url_when_given(settings):
    assert defs.airflow_env(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow"
    with_pg = Settings(home=settings.home, airflow_db_url=url)
    assert defs.airflow_env(with_pg)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url


def test_airflow_passwords_are_ours_before_the_first_start(tmp_path, monkeypatch):
    """Every user already has a password, so SimpleAuthManager never generates one and prints it to its log."""
    import json

    from mledge.ops.components import AIRFLOW_USERS, airflow_env, airflow_passwords_file
    from mledge.ops.settings import Settings

    monkeypatch.setenv("MLEDGE_HOME", str(tmp_path))
    settings = Settings()
    env = airflow_env(settings)
    path = airflow_passwords_file(settings)
    passwords = json.loads(path.read_text())
    assert sorted(passwords) == sorted(AIRFLOW_USERS)
    assert len(set(passwords.values())) == len(passwords) and all(len(p) >= 20 for p in passwords.values())
    assert path.stat().st_mode & 0o777 == 0o600
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    airflow_env(settings)
    assert json.loads(path.read_text()) == passwords  # generated once
