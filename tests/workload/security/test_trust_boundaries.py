"""The stack's own boundaries between the platform and the sites, checked on what it really builds and runs.

- Each component's environment comes from an allow-list: a site's processes hold no platform credential or
  database URL, the platform's hold no site's MLflow password, and telemetry is off everywhere (finding 4).
- As root, the platform's processes and each site's run as their own Unix users, homes are 0700: a central
  process that opens a site's batch gets EACCES, and so does another site (findings 5 and issue 11).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from mledge.ops import components as defs
from mledge.ops import identities
from mledge.ops.settings import Settings
from mledge.security import mlflow_auth

SUPERVISOR = {  # what the operator's shell might hold when it runs `mledge stack up`
    "PATH": "/usr/bin:/bin",
    "MLEDGE_AIRFLOW_DB_URL": "postgresql+psycopg2://airflow:s3cret-db@db/airflow",  # pragma: allowlist secret
    "MLEDGE_COST_DB_URL": "postgresql+psycopg2://costs:s3cret-costs@db/costs",  # pragma: allowlist secret
    "AWS_SECRET_ACCESS_KEY": "operator-aws-secret",  # pragma: allowlist secret
    "MLFLOW_TRACKING_PASSWORD": "operator-mlflow",  # pragma: allowlist secret
    "MLEDGE_DRIFT_SCHEDULE": "none",
    "PYTHONPATH": "/somewhere/else",
    "AIRFLOW_CONN_SMTP_DEFAULT": "smtp://mailer:s3cret-smtp@mail:587",  # pragma: allowlist secret
}


@pytest.fixture()
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MLEDGE_HOME", str(tmp_path))
    for key in ("MLEDGE_PLATFORM_HOME", "MLEDGE_DATA_ROOT"):
        monkeypatch.delenv(key, raising=False)
    return Settings()


def test_a_sites_environment_holds_nothing_of_the_platform(settings):
    platform_password = mlflow_auth.client_env(settings, "platform")["MLFLOW_TRACKING_PASSWORD"]
    jwt = defs.ensure_secret_env(settings)["AIRFLOW__API_AUTH__JWT_SECRET"]
    for site in settings.sites:
        for env in (defs.site_env(settings, site, SUPERVISOR), defs.edge_worker_env(settings, site, SUPERVISOR)):
            values = "\n".join(f"{k}={v}" for k, v in env.items())
            for secret in ("s3cret-db", "s3cret-costs", "operator-aws-secret", "operator-mlflow", "s3cret-smtp",
                           platform_password):
                assert secret not in values, secret
            assert env["MLFLOW_TRACKING_USERNAME"] == site
            assert env["MLEDGE_HOME"] == str(settings.site_home(site))
            assert env["MLEDGE_DRIFT_SCHEDULE"] == "none"  # non-secret settings pass
            assert "PYTHONPATH" not in env and env["FLWR_TELEMETRY_ENABLED"] == "0"
            assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DO_NOT_TRACK"] == "true"
            # MLflow down: a few short tries, then the outbox and Airflow's retries (not 4 minutes per request)
            assert int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3
        # Only the edge worker holds the shared worker key (the provider signs with it): README says what it allows.
        assert "AIRFLOW__API_AUTH__JWT_SECRET" not in defs.site_env(settings, site, SUPERVISOR)
        assert defs.edge_worker_env(settings, site, SUPERVISOR)["AIRFLOW__API_AUTH__JWT_SECRET"] == jwt


def test_the_platforms_environment_holds_no_sites_credentials(settings):
    env = defs.platform_env(settings, SUPERVISOR)
    site_passwords = [mlflow_auth.client_env(settings, s)["MLFLOW_TRACKING_PASSWORD"] for s in settings.sites]
    values = "\n".join(env.values())
    assert not [p for p in site_passwords if p in values]
    assert env["MLFLOW_TRACKING_USERNAME"] == "platform"
    assert env["MLEDGE_AIRFLOW_DB_URL"] == SUPERVISOR["MLEDGE_AIRFLOW_DB_URL"]  # platform-only settings reach it
    assert "AWS_SECRET_ACCESS_KEY" not in env  # cloud credentials come from Airflow Connections, per task
    assert env["MLEDGE_HOME"] == str(settings.platform_home)
    assert not str(settings.data_root).startswith(env["MLEDGE_HOME"])  # no site store in the platform's home
    # Airflow Connections (SMTP, clouds) reach the platform's Airflow processes, which run the tasks that use them.
    assert "AIRFLOW_CONN_SMTP_DEFAULT" not in env
    smtp = SUPERVISOR["AIRFLOW_CONN_SMTP_DEFAULT"]
    assert defs.airflow_env(settings, SUPERVISOR)["AIRFLOW_CONN_SMTP_DEFAULT"] == smtp


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="Unix users and ownership need root (CI runs as root)")


def _open_as(account: identities.Account, path) -> int:
    """errno of opening ``path`` for reading as ``account`` (0 if it opened)."""
    code = f"import sys\ntry:\n    open({str(path)!r}).read()\nexcept OSError as e:\n    sys.exit(e.errno)\n"
    # The system's interpreter: the test's own may live where other users cannot run it (pyenv under /root).
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return subprocess.run(
        [python, "-c", code], user=account.uid, group=account.gid, extra_groups=[], capture_output=True
    ).returncode


@root_only
def test_a_central_process_cannot_open_a_sites_batch(tmp_path):
    base = tmp_path / "deployment"  # pytest's tmp folders are private to root: make the path passable
    identities.traversable([p for p in (tmp_path, *tmp_path.parents) if p != p.parent])
    platform = identities.ensure_user(identities.PLATFORM_USER)
    sites = {s: identities.ensure_user(identities.site_user(s)) for s in ("plant_a", "plant_b")}
    identities.traversable([base, base / "sites"])
    batches = {}
    for site, account in sites.items():
        store = base / "sites" / site / "batches"
        store.mkdir(parents=True)
        batches[site] = store / "batch-000001.csv"
        batches[site].write_text("udi,torque_nm\n1,40.1\n")
        identities.own(base / "sites" / site, account)
    identities.own(base / "platform", platform)
    (base / "platform" / "platform.db").write_text("")
    identities.own(base / "platform", platform)

    assert _open_as(platform, batches["plant_a"]) == errno.EACCES
    assert _open_as(sites["plant_b"], batches["plant_a"]) == errno.EACCES  # nor can another site
    assert _open_as(sites["plant_a"], base / "platform" / "platform.db") == errno.EACCES
    assert _open_as(sites["plant_a"], batches["plant_a"]) == 0  # the site reads its own
