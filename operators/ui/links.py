"""Links from an alert to the MLflow UI: its Evidently report and the models that drift concerns.

The MLflow UI's address as the browser sees it: ``MLEDGE_MLFLOW_UI_URL``, else ``MLFLOW_TRACKING_URI`` when that
is an http(s) server (the local stack sets it), else ``http://127.0.0.1:5000``.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote

from mledge.contracts import registered_models

DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"

# mlflow-artifacts:/<experiment>/<run>/artifacts/<path>, with or without a host (the proxied artifact store).
_PROXIED = re.compile(r"^mlflow-artifacts:(?://[^/]+)?/(?P<exp>[^/]+)/(?P<run>[0-9a-f]{32})/artifacts/?(?P<path>.*)$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-f]{32})/?(?P<path>.*)$")
# A local artifact store laid out by MLflow: .../<experiment>/<run>/artifacts/<path>
_LOCAL = re.compile(r"(?:^|/)(?P<exp>\d+)/(?P<run>[0-9a-f]{32})/artifacts/?(?P<path>.*)$")


def mlflow_ui_url() -> str:
    explicit = os.environ.get("MLEDGE_MLFLOW_UI_URL")
    if explicit:
        return explicit.rstrip("/")
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking.startswith(("http://", "https://")):
        return tracking.rstrip("/")
    return DEFAULT_MLFLOW_UI_URL


def _run_page(base: str, run_id: str, experiment_id: str | None, path: str) -> str:
    if experiment_id:
        page = f"{base}/#/experiments/{quote(experiment_id)}/runs/{run_id}"
        return f"{page}/artifactPath/{quote(path)}" if path else page
    return f"{base}/#/runs/{run_id}"  # the MLflow UI redirects to the run's experiment


def _experiment(details: dict) -> str | None:
    value = details.get("mlflow_experiment_id") or details.get("experiment_id")
    return str(value) if value not in (None, "") else None


def report_link(report_uri: str | None, details: dict | None = None) -> str | None:
    """The MLflow UI page showing the report, or None when the URI is not one MLflow serves."""
    if not report_uri:
        return None
    base = mlflow_ui_url()
    if report_uri.startswith(("http://", "https://")):
        return report_uri
    details = details or {}
    for pattern in (_PROXIED, _RUNS, _LOCAL):
        if match := pattern.search(report_uri.removeprefix("file://")):
            found = match.groupdict()
            experiment = found.get("exp") or _experiment(details)
            return _run_page(base, found["run"], experiment, found["path"])
    run_id = details.get("mlflow_run_id") or details.get("run_id")
    if isinstance(run_id, str) and re.fullmatch(r"[0-9a-f]{32}", run_id):
        experiment = _experiment(details)
        return _run_page(base, run_id, experiment, "")
    return None


def model_names(site: str | None) -> list[str]:
    """The registered models a drift at ``site`` concerns: that site's model, then the global one."""
    return registered_models((site,) if site else ())


def model_link(name: str) -> str:
    return f"{mlflow_ui_url()}/#/models/{quote(name)}"
