"""Every table of the platform database, in one MetaData (the migrations in ``migrations/`` create them)."""

from __future__ import annotations

import sqlalchemy as sa

from mledge.contracts import ALERT_DECISIONS, ALERT_KINDS, ALERT_STATUSES

metadata = sa.MetaData()


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=name)


# One row per evaluated (site, batch, kind); see drift/alerts.py.
drift_alerts = sa.Table(
    "drift_alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("site", sa.String(255), nullable=False, index=True),
    sa.Column("batch", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("statistic", sa.Float, nullable=True),
    sa.Column("p_value", sa.Float, nullable=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("report_uri", sa.Text, nullable=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("details", sa.JSON, nullable=True),
    _one_of("status", ALERT_STATUSES, "drift_alerts_status"),
    _one_of("kind", ALERT_KINDS, "drift_alerts_kind"),
    _one_of("decision", ALERT_DECISIONS, "drift_alerts_decision"),
)

# Every status change of an alert: who, when, why.
drift_alert_events = sa.Table(
    "drift_alert_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.Integer, sa.ForeignKey("drift_alerts.id"), nullable=False, index=True),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# Which batches of a site have been evaluated for drift (drift/tracking.py).
drift_processed_batches = sa.Table(
    "drift_processed_batches",
    metadata,
    sa.Column("site", sa.String(255), primary_key=True),
    sa.Column("batch", sa.String(255), primary_key=True),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("evaluation", sa.JSON, nullable=True),
)

# Per-site strategy state (FedQV budgets, reputation histories), one JSON document per (strategy, site).
strategy_site_state = sa.Table(
    "strategy_site_state",
    metadata,
    sa.Column("strategy", sa.String(64), primary_key=True),
    sa.Column("site", sa.String(255), primary_key=True),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
