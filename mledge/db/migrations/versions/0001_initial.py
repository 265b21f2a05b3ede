"""Initial platform database: drift alerts and their history, evaluated batches, per-site strategy state.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("new", "acknowledged", "dismissed", "retraining", "resolved")
KINDS = ("data", "concept")
DECISIONS = ("drift", "no_drift")


def _one_of(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=name)


def upgrade() -> None:
    op.create_table(
        "drift_alerts",
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
        _one_of("status", STATUSES, "drift_alerts_status"),
        _one_of("kind", KINDS, "drift_alerts_kind"),
        _one_of("decision", DECISIONS, "drift_alerts_decision"),
    )
    op.create_table(
        "drift_alert_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("drift_alerts.id"), nullable=False, index=True),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "drift_processed_batches",
        sa.Column("site", sa.String(255), primary_key=True),
        sa.Column("batch", sa.String(255), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evaluation", sa.JSON, nullable=True),
    )
    op.create_table(
        "strategy_site_state",
        sa.Column("strategy", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(255), primary_key=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in ("strategy_site_state", "drift_processed_batches", "drift_alert_events", "drift_alerts"):
        op.drop_table(table)
