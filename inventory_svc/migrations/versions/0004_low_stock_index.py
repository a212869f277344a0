"""A partial index for the low-stock listings: quantity <= low_stock_threshold compares two
columns of a row, which no plain index serves.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_items_low_stock_id",
        "items",
        ["id"],
        postgresql_where=sa.text("is_active = true AND quantity <= low_stock_threshold"),
        sqlite_where=sa.text("is_active = 1 AND quantity <= low_stock_threshold"),
    )


def downgrade() -> None:
    op.drop_index("ix_items_low_stock_id", table_name="items")
