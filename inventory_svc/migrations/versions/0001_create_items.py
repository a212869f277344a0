"""Create the items table with an index for every filter ListItems offers.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TEXT_SEARCH_COLUMNS = ("name", "sku", "brand", "category")


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("sku", sa.String(100), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("category", sa.String(100), nullable=False),
        sa.Column("brand", sa.String(100), nullable=False),
        sa.Column("currency_code", sa.String(3), nullable=False),
        sa.Column("price_nanos", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("low_stock_threshold", sa.Integer(), nullable=False),
        sa.Column("max_quantity", sa.Integer(), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("weight_kg", sa.Float(), nullable=True),
        sa.Column("dimensions", sa.String(100), nullable=False),
        sa.Column("customer_id", sa.String(100), nullable=False),
        sa.Column("create_time", sa.DateTime(), nullable=False),
        sa.Column("update_time", sa.DateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity >= 0", name="ck_items_quantity_not_negative"),
        sa.UniqueConstraint("sku", name="uq_items_sku"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_items_customer_id_id", "items", ["customer_id", "id"])
    op.create_index("ix_items_category_id", "items", ["category", "id"])
    op.create_index("ix_items_brand_id", "items", ["brand", "id"])
    op.create_index("ix_items_price_nanos", "items", ["price_nanos"])
    op.create_index("ix_items_quantity", "items", ["quantity"])
    op.create_index("ix_items_is_active", "items", ["is_active"])
    if op.get_bind().dialect.name == "postgresql":
        # Trigram indexes serve the case-insensitive substring filters (name_contains, query).
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for column in TEXT_SEARCH_COLUMNS:
            op.execute(f"CREATE INDEX ix_items_{column}_trgm ON items USING gin (lower({column}) gin_trgm_ops)")


def downgrade() -> None:
    op.drop_table("items")
