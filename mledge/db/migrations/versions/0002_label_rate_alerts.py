"""Drift alerts of kind ``label_rate`` with decision ``anomaly``: a batch that arrived without its failures.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Only the check constraints of ``drift_alerts`` change. SQLite cannot alter a constraint, so there the table is
copied (Alembic's batch mode, from the definition below, keeping its indexes and rows); PostgreSQL drops and adds
the two constraints in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATUSES = ("new", "acknowledged", "dismissed", "retraining", "resolved")
OLD_KINDS, NEW_KINDS = ("data", "concept"), ("data", "concept", "label_rate")
OLD_DECISIONS, NEW_DECISIONS = ("drift", "no_drift"), ("drift", "no_drift", "anomaly")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _table(kinds: tuple[str, ...], decisions: tuple[str, ...]) -> sa.Table:
    """``drift_alerts`` as revision 0001 made it, with the given kinds and decisions allowed."""
    return sa.Table(
        "drift_alerts",
        sa.MetaData(),
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
        sa.CheckConstraint(_in("status", STATUSES), name="drift_alerts_status"),
        sa.CheckConstraint(_in("kind", kinds), name="drift_alerts_kind"),
        sa.CheckConstraint(_in("decision", decisions), name="drift_alerts_decision"),
    )


def _switch(old: tuple[tuple[str, ...], tuple[str, ...]], new: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    with op.batch_alter_table("drift_alerts", copy_from=_table(*old)) as batch:
        batch.drop_constraint("drift_alerts_kind", type_="check")
        batch.drop_constraint("drift_alerts_decision", type_="check")
        batch.create_check_constraint("drift_alerts_kind", _in("kind", new[0]))
        batch.create_check_constraint("drift_alerts_decision", _in("decision", new[1]))
    # A copied table (SQLite) comes without its indexes: put back those revision 0001 made.
    present = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("drift_alerts")}
    for column in ("site", "status"):
        if f"ix_drift_alerts_{column}" not in present:
            op.create_index(f"ix_drift_alerts_{column}", "drift_alerts", [column])


def upgrade() -> None:
    _switch((OLD_KINDS, OLD_DECISIONS), (NEW_KINDS, NEW_DECISIONS))


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM drift_alert_events WHERE alert_id IN "
                       "(SELECT id FROM drift_alerts WHERE kind = 'label_rate' OR decision = 'anomaly')"))
    op.execute(sa.text("DELETE FROM drift_alerts WHERE kind = 'label_rate' OR decision = 'anomaly'"))
    _switch((NEW_KINDS, NEW_DECISIONS), (OLD_KINDS, OLD_DECISIONS))
