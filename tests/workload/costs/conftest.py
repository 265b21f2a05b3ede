"""Fixtures of the cost layer tests: stores on SQLite and PostgreSQL, sample sources, recorded HTTP sessions.

PostgreSQL: a uniquely named database on 127.0.0.1:5432 (trust auth, user postgres, or MLEDGE_TEST_PG_URL for
the server), created and dropped per test module. Unreachable: skipped, unless CI=true, where it fails.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import urllib3

from costs.config import load_config
from costs.store import CostStore

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "costs" / "samples"
PG_SERVER = os.environ.get("MLEDGE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _no_cloud_credentials(monkeypatch, tmp_path):
    """No test may find real credentials or reach an instance metadata service."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_", "GCP_", "CLOUDSDK_")) or name in (
                "MLEDGE_COST_DB_URL", "MLEDGE_COST_SOURCES", "MLEDGE_GCP_BILLING_TABLE"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # google-auth: do not probe the GCE metadata server


@pytest.fixture(scope="module")
def pg_server_url() -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(PG_SERVER)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_SERVER} is unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {PG_SERVER} is unreachable")
    finally:
        engine.dispose()
    return PG_SERVER


@pytest.fixture(scope="module")
def pg_database(pg_server_url):
    """A fresh, uniquely named PostgreSQL database for one test module; dropped afterwards."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"mledge_costs_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _clear(store: CostStore) -> None:
    with store.engine.begin() as conn:
        for table in ("cost_rows", "cost_days", "cost_shares", "ingestion_runs", "cost_quarantine", "price_offers"):
            conn.exec_driver_sql(f"DELETE FROM {table}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path) -> CostStore:
    """The same test on SQLite and on PostgreSQL (emptied between tests; the database lives per module)."""
    if request.param == "sqlite":
        store = CostStore(f"sqlite:///{tmp_path / 'costs.db'}")
    else:
        store = CostStore(request.getfixturevalue("pg_database"))
        _clear(store)
    yield store
    store.dispose()


@pytest.fixture
def sqlite_store(tmp_path) -> CostStore:
    store = CostStore(f"sqlite:///{tmp_path / 'costs.db'}")
    yield store
    store.dispose()


@pytest.fixture
def sample_config():
    return load_config()


@pytest.fixture
def samples_copy(tmp_path) -> Path:
    """A writable copy of the shipped samples (tests that damage a file work on this)."""
    target = tmp_path / "samples"
    shutil.copytree(SAMPLES, target, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return target


class RecordedSession(requests.Session):
    """A ``requests.Session`` whose answers are recorded HTTP responses, for the SDKs' real transports.

    ``routes``: (method, URL regex, responses); each matching request takes the next response of its route (the
    last one repeats). Every request is kept in ``calls`` as (method, url, params, body).
    """

    is_mtls = False  # google-auth's AuthorizedSession attribute, read by the BigQuery client

    def __init__(self, routes: list[tuple[str, str, list[requests.Response]]]) -> None:
        super().__init__()
        self.routes = [(m, re.compile(p), list(r)) for m, p, r in routes]
        self.calls: list[tuple[str, str, dict | None, bytes | str | None]] = []

    def request(self, method, url, params=None, data=None, headers=None, **kwargs):  # noqa: D401
        prepared = requests.Request(method, url, params=params).prepare()
        self.calls.append((method.upper(), prepared.url, params, data))
        for route_method, pattern, responses in self.routes:
            if route_method == method.upper() and pattern.search(prepared.url):
                recorded = responses.pop(0) if len(responses) > 1 else responses[0]
                return _replay(recorded, prepared)
        raise AssertionError(f"unexpected request {method} {prepared.url}")


def _replay(recorded: requests.Response, prepared: requests.PreparedRequest) -> requests.Response:
    """A fresh copy of a recorded response, with the urllib3 body a real one has (azure-core reads ``raw``)."""
    answer = copy.copy(recorded)
    answer.raw = urllib3.HTTPResponse(body=io.BytesIO(recorded.content), headers=dict(recorded.headers),
                                      status=recorded.status_code, preload_content=False)
    answer.request = prepared
    answer.url = prepared.url
    return answer


def http_response(status: int, body: dict | str | bytes = b"", headers: dict | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    if isinstance(body, dict):
        body = json.dumps(body)
        headers = {"Content-Type": "application/json", **(headers or {})}
    response._content = body.encode() if isinstance(body, str) else body
    response.headers.update(headers or {})
    response.encoding = "utf-8"
    return response


@pytest.fixture
def recorded_session() -> Callable[..., RecordedSession]:
    return RecordedSession
