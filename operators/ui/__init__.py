"""MLEDGE's pages inside the Airflow UI: Federation, Drift review and Costs (an Airflow 3 plugin).

The api-server mounts the FastAPI app under ``/mledge`` and the UI shows three nav entries that frame its pages.
Registered through the ``airflow.plugins`` entry point ``mledge = "operators.ui:MledgePlugin"`` (pyproject.toml).

Every figure on these pages comes from the workload's ``mledge`` command (``operators.hooks.mledge.MledgeHook``):
this package runs in the orchestrator environment, which has neither ``drift`` nor ``costs`` nor their libraries.
An approval's Asset event goes through Airflow's public REST API, as the approving user (``asset_events``).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/mledge"
# Relative hrefs (no leading slash): the UI resolves them against its own base URL, so a base_url with a
# path (behind a proxy) keeps working.
_PREFIX = URL_PREFIX.strip("/")

NAV_VIEWS = [
    {
        "name": "Federation",
        "href": f"{_PREFIX}/federation",
        "destination": "nav",
        "url_route": "mledge-federation",
        "icon": f"{_PREFIX}/static/federation.svg",
        "nav_top_level": True,
    },
    {
        "name": "Drift",
        "href": f"{_PREFIX}/drift",
        "destination": "nav",
        "url_route": "mledge-drift",
        "icon": f"{_PREFIX}/static/drift.svg",
        "nav_top_level": True,
    },
    {
        "name": "Costs",
        "href": f"{_PREFIX}/costs",
        "destination": "nav",
        "url_route": "mledge-costs",
        "icon": f"{_PREFIX}/static/costs.svg",
        "nav_top_level": True,
    },
]


class MledgePlugin(AirflowPlugin):
    """Federation, Drift review and Costs pages, plus the same data as JSON under ``/mledge/api``."""

    name = "mledge"
    external_views = NAV_VIEWS

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Built on first use: only the api-server mounts the app, while every task process loads plugins (for
        # macros) and should not pay a second for FastAPI, Jinja and Airflow's API modules.
        from operators.ui.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "MLEDGE federation, drift review and costs"}]
