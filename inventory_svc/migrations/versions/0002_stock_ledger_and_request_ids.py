"""The stock movement ledger and idempotency keys.

Items that exist already get an item_created movement with their quantity, so that an
item's movements add up to its quantity from the start.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stock_movements",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("item_id", sa.BigInteger(), nullable=False),
        sa.Column("sku", sa.String(100), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("quantity_after", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("low_stock_change", sa.SmallInteger(), nullable=False),
        sa.Column("low_stock_threshold", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(100), nullable=False),
        sa.Column("category", sa.String(100), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("create_time", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_stock_movements_item_id_id", "stock_movements", ["item_id", "id"])
    op.create_index("ix_stock_movements_low_stock_change_id", "stock_movements", ["low_stock_change", "id"])
    op.create_table(
        "request_ids",
        sa.Column("request_id", sa.String(36), primary_key=True),
        sa.Column("method", sa.String(50), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_request_ids_create_time", "request_ids", ["create_time"])
    op.execute(
        """
        INSERT INTO stock_movements (item_id, sku, delta, quantity_after, reason, low_stock_change,
                                     low_stock_threshold, customer_id, category, note, principal,
                                     request_id, create_time)
        SELECT id, sku, quantity, quantity, 'item_created', 0, low_stock_threshold, customer_id, category,
               'recorded when the ledger was introduced', '', '', create_time
        FROM items ORDER BY id
        """
    )


def downgrade() -> None:
    op.drop_table("request_ids")
    op.drop_table("stock_movements")
