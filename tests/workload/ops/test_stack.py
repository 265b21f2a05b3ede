"""The local stack's process handling: one process group per component, stopped by its recorded PID."""

import sys

import pytest

from mledge.ops import stack
from mledge.ops.settings import Settings


@pytest.fixture()
def settings(tmp_path):
    return Settings(home=tmp_path, airflow_db_url=None)


def component(name, script, healthy=lambda: True):
    return stack.Component(name, [sys.executable, "-c", script], {"PATH": "/usr/bin:/bin"}, healthy)


def test_stop_ends_the_component_and_everything_it_started(settings):
    # The component starts a grandchild, as gunicorn starts workers and a SuperNode starts ClientApps.
    parent = component(
        "parent",
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "time.sleep(300)\n",
    )
    pid, started = stack.start(settings, parent)
    assert started
    stack.wait_healthy(settings, [parent], timeout=30)
    assert stack.running_pid(settings, "parent") == pid
    assert stack.stop(settings, "parent", grace=10)
    assert not stack.group_alive(pid)
    assert stack.running_pid(settings, "parent") is None
    assert not (settings.run_dir / "parent.pid").exists()


def test_start_reuses_a_running_component(settings):
    sleeper = component("sleeper", "import time; time.sleep(300)")
    first, started = stack.start(settings, sleeper)
    try:
        again, started_again = stack.start(settings, sleeper)
        assert (again, started, started_again) == (first, True, False)
    finally:
        stack.stop(settings, "sleeper")


def test_a_component_that_dies_at_start_is_reported_with_its_log(settings):
    broken = component("broken", "import sys; print('cannot bind port 5000'); sys.exit(3)", healthy=lambda: False)
    stack.start(settings, broken)
    with pytest.raises(stack.StackError, match="broken exited during start-up") as failure:
        stack.wait_healthy(settings, [broken], timeout=30)
    assert "cannot bind port 5000" in str(failure.value)


def test_stop_of_a_component_that_is_not_running_is_a_no_op(settings):
    assert stack.stop(settings, "never-started") is False


def test_secrets_are_generated_once_and_private(settings):
    first = stack.ensure_secret_env(settings)
    assert stack.ensure_secret_env(settings) == first
    assert len(first["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    mode = (settings.secrets / "airflow.env").stat().st_mode & 0o777
    assert mode == 0o600


def test_airflow_uses_sqlite_by_default_and_a_database_url_when_given(settings):
    assert stack.airflow_env(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/airflow"
    with_pg = Settings(home=settings.home, airflow_db_url=url)
    assert stack.airflow_env(with_pg)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url


def test_airflow_passwords_are_ours_before_the_first_start(tmp_path, monkeypatch):
    """Every user already has a password, so SimpleAuthManager never generates one and prints it to its log."""
    import json

    from mledge.ops.settings import Settings
    from mledge.ops.stack import AIRFLOW_USERS, airflow_env, airflow_passwords_file

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
