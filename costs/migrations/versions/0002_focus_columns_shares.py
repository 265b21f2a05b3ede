"""Every FOCUS 1.0-1.2 column, day fingerprints, and each federated run's cost shares per site.

- cost_rows: the 31 FOCUS columns 0001 did not keep (commitment discounts, capacity reservations, pricing
  currency, consumed quantity and unit, SKU details, invoice, names and types), the FOCUS version and delivery
  read; PricingQuantity becomes a quantity (NUMERIC(38, 18); on SQLite exact decimal text instead of 1e-10 units,
  whose 64 bits ended at about 9.2e8).
- cost_days: per source and day, the fingerprint of what is stored (an unchanged day is not rewritten).
- cost_shares: per Flower run and site, the share of the run's cost the site bears and how it was computed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from costs.dbtypes import Money, Quantity

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TEXT = ("AvailabilityZone", "ChargeFrequency", "CommitmentDiscountCategory", "CommitmentDiscountId",
         "CommitmentDiscountName", "CommitmentDiscountStatus", "CommitmentDiscountType", "ConsumedUnit",
         "PricingCategory", "RegionName", "ResourceName", "ResourceType", "SkuPriceId", "SubAccountName",
         "CapacityReservationId", "CapacityReservationStatus", "CommitmentDiscountUnit", "ServiceSubcategory",
         "SkuMeter", "SkuPriceDetails", "BillingAccountType", "InvoiceId", "PricingCurrency", "SubAccountType")
_QUANTITIES = ("ConsumedQuantity", "ContractedUnitPrice", "ListUnitPrice", "CommitmentDiscountQuantity",
               "PricingCurrencyContractedUnitPrice", "PricingCurrencyListUnitPrice")
_MONEY = ("PricingCurrencyEffectiveCost",)
_UNITS = 10_000_000_000  # 0001 kept SQLite amounts as integer 1e-10 units


def upgrade() -> None:
    bind = op.get_bind()
    for name in _TEXT:
        op.add_column("cost_rows", sa.Column(name, sa.Text()))
    for name in _QUANTITIES:
        op.add_column("cost_rows", sa.Column(name, Quantity()))
    for name in _MONEY:
        op.add_column("cost_rows", sa.Column(name, Money()))
    op.add_column("cost_rows", sa.Column("x_focus_version", sa.String(8)))
    op.add_column("cost_rows", sa.Column("x_delivery", sa.Text()))
    if bind.dialect.name == "sqlite":
        # Integer 1e-10 units -> exact decimal text with 18 places, without going through a float.
        op.add_column("cost_rows", sa.Column("PricingQuantity_new", Quantity()))
        op.execute(
            'UPDATE cost_rows SET "PricingQuantity_new" = CASE WHEN "PricingQuantity" IS NULL THEN NULL ELSE '
            f'(CASE WHEN "PricingQuantity" < 0 THEN \'-\' ELSE \'\' END) || (abs("PricingQuantity") / {_UNITS}) || '
            f'\'.\' || substr(\'0000000000\' || (abs("PricingQuantity") % {_UNITS}), -10) || \'00000000\' END'
        )
        op.execute('ALTER TABLE cost_rows DROP COLUMN "PricingQuantity"')
        op.execute('ALTER TABLE cost_rows RENAME COLUMN "PricingQuantity_new" TO "PricingQuantity"')
    else:
        op.alter_column("cost_rows", "PricingQuantity", type_=sa.Numeric(38, 18),
                        existing_type=sa.Numeric(30, 10))
    op.create_table(
        "cost_days",
        sa.Column("x_source", sa.String(200), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("x_ingestion_run", sa.Integer()),
        sa.Column("x_delivery", sa.Text()),
        sa.Column("written_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "cost_shares",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("flower_run_id", sa.String(100), nullable=False),
        sa.Column("x_project", sa.String(200), nullable=False),
        sa.Column("site", sa.String(100), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("x_cost_share", Money(), nullable=False),
        sa.Column("contribution", Quantity()),
        sa.Column("examples", sa.Integer()),
        sa.Column("details", sa.Text()),
        sa.Column("computed_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("flower_run_id", "site", name="uq_cost_shares_run_site"),
    )
    op.create_index("ix_cost_shares_project_day", "cost_shares", ["x_project", "day"])


def downgrade() -> None:
    op.drop_index("ix_cost_shares_project_day", table_name="cost_shares")
    op.drop_table("cost_shares")
    op.drop_table("cost_days")
    for name in ("x_delivery", "x_focus_version", *_MONEY, *_QUANTITIES, *_TEXT):
        op.drop_column("cost_rows", name)
