"""Stock changes as HOT updates on PostgreSQL: no index holds quantity any more.

A stock change now rewrites only its row, not every index on items. Quantity was in two:
ix_items_quantity, and the predicate of the low-stock partial index. Either made each
AdjustQuantity insert a new entry into all thirteen indexes of items, the four trigram indexes included, which cost
PostgreSQL more CPU than the change itself and grew those indexes' pending lists until
searches slowed to twice their time. The low-stock index now filters on a generated
column, is_low_stock, which changes only when an item crosses its threshold.

PostgreSQL rewrites items to add the stored column (an exclusive lock for as long as that
takes: seconds per million items), leaving room on each page for updated rows (fillfactor
90); SQLite computes the column when read.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LOW_STOCK = "is_active AND quantity <= low_stock_threshold"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_items_low_stock_id", table_name="items")
    op.drop_index("ix_items_quantity", table_name="items")
    if postgresql:
        # Before the rewrite that adding a stored column makes, so that the rewrite leaves the room.
        op.execute("ALTER TABLE items SET (fillfactor = 90)")
        op.execute(f"ALTER TABLE items ADD COLUMN is_low_stock boolean GENERATED ALWAYS AS ({LOW_STOCK}) STORED")
    else:
        # SQLite adds only virtual generated columns to an existing table.
        op.execute(f"ALTER TABLE items ADD COLUMN is_low_stock BOOLEAN GENERATED ALWAYS AS ({LOW_STOCK}) VIRTUAL")
    op.create_index(
        "ix_items_low_stock_id",
        "items",
        ["id"],
        postgresql_where=sa.text("is_low_stock"),
        sqlite_where=sa.text("is_low_stock = 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_items_low_stock_id", table_name="items")
    op.execute("ALTER TABLE items DROP COLUMN is_low_stock")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE items RESET (fillfactor)")
    op.create_index("ix_items_quantity", "items", ["quantity"])
    op.create_index(
        "ix_items_low_stock_id",
        "items",
        ["id"],
        postgresql_where=sa.text("is_active = true AND quantity <= low_stock_threshold"),
        sqlite_where=sa.text("is_active = 1 AND quantity <= low_stock_threshold"),
    )
