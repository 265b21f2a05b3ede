"""Initial cost store: FOCUS-named cost rows, ingestion runs, quarantine, price offers.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from costs.dbtypes import Money

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cost_rows",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("x_source", sa.String(200), nullable=False),
        sa.Column("x_row_key", sa.String(48), nullable=False),
        sa.Column("BilledCost", Money(), nullable=False),
        sa.Column("EffectiveCost", Money(), nullable=False),
        sa.Column("ListCost", Money()),
        sa.Column("ContractedCost", Money()),
        sa.Column("BillingCurrency", sa.String(3), nullable=False),
        sa.Column("BillingAccountId", sa.String(200), nullable=False),
        sa.Column("BillingAccountName", sa.String(400)),
        sa.Column("BillingPeriodStart", sa.DateTime()),
        sa.Column("BillingPeriodEnd", sa.DateTime()),
        sa.Column("ChargePeriodStart", sa.DateTime(), nullable=False),
        sa.Column("ChargePeriodEnd", sa.DateTime(), nullable=False),
        sa.Column("ChargeCategory", sa.String(20), nullable=False),
        sa.Column("ChargeClass", sa.String(20)),
        sa.Column("ChargeDescription", sa.Text()),
        sa.Column("PricingQuantity", Money()),
        sa.Column("PricingUnit", sa.String(100)),
        sa.Column("ProviderName", sa.String(100), nullable=False),
        sa.Column("PublisherName", sa.String(200)),
        sa.Column("InvoiceIssuerName", sa.String(200)),
        sa.Column("ServiceCategory", sa.String(100)),
        sa.Column("ServiceName", sa.String(300), nullable=False),
        sa.Column("RegionId", sa.String(100)),
        sa.Column("ResourceId", sa.Text()),
        sa.Column("SkuId", sa.String(300)),
        sa.Column("SubAccountId", sa.String(200)),
        sa.Column("Tags", sa.Text()),
        sa.Column("x_project", sa.String(200)),
        sa.Column("x_site", sa.String(100)),
        sa.Column("x_estimated", sa.Boolean(), nullable=False),
        sa.Column("x_ingestion_run", sa.Integer()),
        sa.UniqueConstraint("x_source", "x_row_key", name="uq_cost_rows_natural_key"),
    )
    op.create_index("ix_cost_rows_source_period", "cost_rows", ["x_source", "ChargePeriodStart"])
    op.create_index("ix_cost_rows_project_period", "cost_rows", ["x_project", "ChargePeriodStart"])
    op.create_table(
        "ingestion_runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("window_start", sa.Date(), nullable=False),
        sa.Column("window_end", sa.Date(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("rows_written", sa.Integer(), nullable=False),
        sa.Column("days_failed", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text()),
    )
    op.create_table(
        "cost_quarantine",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("x_source", sa.String(200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("field", sa.String(200), nullable=False),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("location", sa.Text()),
        sa.Column("record", sa.Text()),
        sa.Column("x_ingestion_run", sa.Integer()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "price_offers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("region", sa.String(100), nullable=False),
        sa.Column("instance_type", sa.String(200), nullable=False),
        sa.Column("vcpu", sa.Integer(), nullable=False),
        sa.Column("memory_gib", sa.Float(), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("gpu_model", sa.String(50)),
        sa.Column("usd_per_hour", Money(), nullable=False),
        sa.Column("as_of", sa.Date()),
        sa.Column("source", sa.Text(), nullable=False),
        sa.UniqueConstraint("provider", "region", "instance_type", name="uq_price_offers_offer"),
    )


def downgrade() -> None:
    op.drop_table("price_offers")
    op.drop_table("cost_quarantine")
    op.drop_table("ingestion_runs")
    op.drop_index("ix_cost_rows_project_period", table_name="cost_rows")
    op.drop_index("ix_cost_rows_source_period", table_name="cost_rows")
    op.drop_table("cost_rows")
