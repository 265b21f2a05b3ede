"""The ``drift_alerts`` table in the platform database: one row per evaluated (site, batch, kind).

Every evaluation is recorded: a confirmed drift starts as ``new`` and waits for a person; a batch without drift
is recorded as ``resolved`` by ``system``, so the table also shows what was checked and found clean. Kind
``label_rate`` with decision ``anomaly`` is a batch that arrived without (most of) its failures: it waits for a
person too, but it is not drift and starts no retraining. ``batch`` names a batch, or ``first:last`` for small
batches that were pooled to be evaluated together. A person
moves an alert on with ``set_status`` (the review page, or ``mledge drift review``); each change keeps who made
it and why, in the alert and in the ``drift_alert_events`` history.

Only SQLAlchemy Core and the standard library. The table lives in the platform database (mledge/db/).
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from mledge.contracts import ALERT_ACTIONS, ALERT_DECISIONS, ALERT_KINDS, ALERT_STATUSES, ALERT_TRANSITIONS
from mledge.db import connect
from mledge.db.schema import drift_alert_events, drift_alerts

STATUSES, KINDS, DECISIONS, ACTIONS = ALERT_STATUSES, ALERT_KINDS, ALERT_DECISIONS, ALERT_ACTIONS
TRANSITIONS = ALERT_TRANSITIONS
SYSTEM_USER = "system"


class AlertError(ValueError):
    """An alert that does not exist, a status change that is not allowed, or an alert that cannot be stored."""


def _iso(value: datetime) -> str:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def _finite(name: str, value: float | None, unit_interval: bool = False) -> float | None:
    if value is None:
        return None
    number = float(value)
    if math.isnan(number):
        return None  # "could not be computed": stored as NULL, which every database accepts
    if math.isinf(number) or (unit_interval and not 0.0 <= number <= 1.0):
        raise AlertError(f"{name} must be {'within [0, 1]' if unit_interval else 'finite'}, got {value!r}")
    return number


def json_clean(value: Any) -> Any:
    """Details as plain JSON: NaN and infinities become null (PostgreSQL's json type refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_clean(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    if hasattr(value, "item"):  # NumPy scalars
        return json_clean(value.item())
    return json.loads(json.dumps(value, default=str))


class AlertStore:
    """Drift alerts in a SQL database (SQLite file or in-memory URL, PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = connect(url)

    def add(
        self,
        *,
        site: str,
        batch: str,
        kind: str,
        statistic: float | None,
        p_value: float | None,
        decision: str,
        report_uri: str | None,
        details: Mapping[str, Any] | None = None,
        connection: Connection | None = None,
    ) -> dict:
        """Record one evaluation; a drift or an anomaly starts as ``new``, a clean result as ``resolved`` by
        ``system``.

        ``connection``: write inside the caller's transaction (the evaluation marks its batches processed in
        the same one, so a retried task cannot record an evaluation twice).
        """
        if not site or not batch:
            raise AlertError(f"an alert needs a site and a batch, got site={site!r} batch={batch!r}")
        if kind not in KINDS:
            raise AlertError(f"kind must be one of {KINDS}, got {kind!r}")
        if decision not in DECISIONS:
            raise AlertError(f"decision must be one of {DECISIONS}, got {decision!r}")
        now = datetime.now(UTC)
        drift = decision in ("drift", "anomaly")  # both wait for a person
        row = {
            "site": site,
            "batch": batch,
            "kind": kind,
            "statistic": _finite("statistic", statistic),
            "p_value": _finite("p_value", p_value, unit_interval=True),
            "decision": decision,
            "report_uri": report_uri,
            "status": "new" if drift else "resolved",
            "created_at": now,
            "updated_at": now,
            "updated_by": SYSTEM_USER,
            "note": "" if drift else "no drift detected",
            "details": json_clean(dict(details or {})),
        }

        def write(conn: Connection) -> int:
            alert_id = conn.execute(drift_alerts.insert().values(**row)).inserted_primary_key[0]
            conn.execute(
                drift_alert_events.insert().values(
                    alert_id=alert_id, from_status=None, to_status=row["status"], user=SYSTEM_USER,
                    note=row["note"] or f"{kind} {'anomaly found' if decision == 'anomaly' else 'drift detected'}",
                    at=now,
                )
            )
            return int(alert_id)

        if connection is not None:
            alert_id = write(connection)
            return self._as_dict({**row, "id": alert_id})
        with self.engine.begin() as conn:
            alert_id = write(conn)
        return self.get(alert_id)

    def list(self, site: str | None = None, status: str | None = None) -> builtins.list[dict]:
        """Alerts, newest first; filtered by site and/or status."""
        if status is not None and status not in STATUSES:
            raise AlertError(f"status must be one of {STATUSES}, got {status!r}")
        query = sa.select(drift_alerts).order_by(drift_alerts.c.id.desc())
        if site is not None:
            query = query.where(drift_alerts.c.site == site)
        if status is not None:
            query = query.where(drift_alerts.c.status == status)
        with self.engine.connect() as conn:
            return [self._as_dict(r._mapping) for r in conn.execute(query)]

    def get(self, alert_id: int) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(drift_alerts).where(drift_alerts.c.id == int(alert_id))).first()
        if row is None:
            raise AlertError(f"no drift alert with id {alert_id}")
        return self._as_dict(row._mapping)

    def set_status(self, alert_id: int, status: str, user: str, note: str = "") -> dict:
        """Move an alert to ``status`` on behalf of ``user``; refuses transitions that TRANSITIONS does not allow."""
        if status not in STATUSES:
            raise AlertError(f"status must be one of {STATUSES}, got {status!r}")
        if not user or not str(user).strip():
            raise AlertError("a status change needs the name of the user who makes it")
        current = self.get(alert_id)
        allowed = TRANSITIONS[current["status"]]
        if status not in allowed:
            raise AlertError(
                f"alert {alert_id} ({current['site']} {current['batch']}, {current['kind']}) is {current['status']!r}"
                f" and cannot become {status!r}; allowed: {', '.join(allowed) or 'none (final)'}"
            )
        if status == current["status"]:
            return current  # allowed and already so (approve again): nothing to record, no second history entry
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            # Only if nobody changed it meanwhile: two reviewers clicking at once must not both win.
            changed = conn.execute(
                drift_alerts.update()
                .where(drift_alerts.c.id == int(alert_id), drift_alerts.c.status == current["status"])
                .values(status=status, updated_at=now, updated_by=str(user).strip(), note=note)
            ).rowcount
            if changed != 1:
                raise AlertError(f"alert {alert_id} was changed by someone else meanwhile; reload and retry")
            conn.execute(
                drift_alert_events.insert().values(
                    alert_id=int(alert_id), from_status=current["status"], to_status=status,
                    user=str(user).strip(), note=note, at=now,
                )
            )
        return self.get(alert_id)

    def history(self, alert_id: int) -> builtins.list[dict]:
        """Every status an alert went through: ``{"from_status", "to_status", "user", "note", "at"}``, oldest first."""
        self.get(alert_id)
        query = (
            sa.select(drift_alert_events)
            .where(drift_alert_events.c.alert_id == int(alert_id))
            .order_by(drift_alert_events.c.id)
        )
        with self.engine.connect() as conn:
            return [
                {
                    "from_status": r.from_status,
                    "to_status": r.to_status,
                    "user": r.user,
                    "note": r.note,
                    "at": _iso(r.at),
                }
                for r in conn.execute(query)
            ]

    @staticmethod
    def _as_dict(row: Mapping[str, Any]) -> dict:
        return {
            "id": int(row["id"]),
            "site": row["site"],
            "batch": row["batch"],
            "kind": row["kind"],
            "statistic": row["statistic"],
            "p_value": row["p_value"],
            "decision": row["decision"],
            "report_uri": row["report_uri"],
            "status": row["status"],
            "created_at": _iso(row["created_at"]),
            "updated_at": _iso(row["updated_at"]),
            "updated_by": row["updated_by"],
            "note": row["note"],
            "details": row["details"] if row["details"] is not None else {},
        }

    def dispose(self) -> None:
        self.engine.dispose()
