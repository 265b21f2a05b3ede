"""Site tasks: they run on the site's own edge worker, and a sensor waits (boundedly) for that worker.

A task that reads a site's rows is sent to the queue named after the site, which only that site's edge worker
serves (``airflow edge worker -q <site>``, at the site). If the worker is not connected, ``EdgeWorkerSensor``
(rescheduled, so it holds no worker slot while it waits) fails after its timeout naming the site and "edge worker
not connected"; the other sites' tasks go on, and a worker that comes back picks up the next run.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout

from mledge.contracts import SITE_EXECUTOR
from operators.hooks.mledge import MledgeHook

WORKER_WAIT_S = 300


def worker_wait_s() -> int:
    """How long a site task waits for its edge worker: MLEDGE_EDGE_WORKER_WAIT_S, else WORKER_WAIT_S."""
    return int(os.environ.get("MLEDGE_EDGE_WORKER_WAIT_S") or WORKER_WAIT_S)


def at_site(site: str) -> dict[str, str]:
    """Operator arguments that send a task to the site's edge worker."""
    return {"queue": site, "executor": SITE_EXECUTOR}


class EdgeWorkerSensor(BaseSensorOperator):
    """Wait until the site's edge worker serves its queue (``mledge sites worker --site <site>``)."""

    template_fields = ("site",)
    ui_color = "#eef3fb"

    def __init__(self, *, site: str, executable: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 10)
        kwargs.setdefault("timeout", worker_wait_s())
        super().__init__(**kwargs)
        self.site, self.executable = site, executable
        self._last: dict = {}

    def poke(self, context: Any) -> bool:
        self._last = MledgeHook(self.executable).run(["sites", "worker", "--site", self.site]) or {}
        self.log.info("site %s: edge worker %s is %s", self.site, self._last.get("worker"), self._last.get("state"))
        return bool(self._last.get("connected"))

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise AirflowSensorTimeout(
                f"site {self.site}: edge worker not connected within {self.timeout:.0f}s "
                f"(last state: {self._last.get('state', 'unknown')}, heartbeat {self._last.get('last_heartbeat')})"
            ) from exc
