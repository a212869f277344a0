"""Reservations: units held for a checkout, and low stock judged on what is available.

Items gain reserved_quantity (0 for every existing item: nothing was reserved), which a
check keeps within quantity. The ledger gains reserved_delta and reserved_after (0 for
every existing row, which keeps "an item's reserved_deltas add up to its reserved
quantity" true from the start) and the reservation a row was a step of.

is_low_stock is now quantity - reserved_quantity <= low_stock_threshold: the generated
column is dropped and added again with that expression (PostgreSQL 15 cannot change a
generation expression in place), which rewrites items on PostgreSQL, as 0005 did.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LOW_STOCK = "is_active AND quantity - reserved_quantity <= low_stock_threshold"
LOW_STOCK_BEFORE = "is_active AND quantity <= low_stock_threshold"
RESERVED_WITHIN_QUANTITY = "reserved_quantity >= 0 AND reserved_quantity <= quantity"
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _low_stock_column(expression: str) -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_items_low_stock_id", table_name="items")
    op.execute("ALTER TABLE items DROP COLUMN is_low_stock")
    kind = "STORED" if postgresql else "VIRTUAL"  # SQLite adds only virtual generated columns
    op.execute(f"ALTER TABLE items ADD COLUMN is_low_stock BOOLEAN GENERATED ALWAYS AS ({expression}) {kind}")
    op.create_index(
        "ix_items_low_stock_id",
        "items",
        ["id"],
        postgresql_where=sa.text("is_low_stock"),
        sqlite_where=sa.text("is_low_stock = 1"),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.add_column("items", sa.Column("reserved_quantity", sa.Integer(), nullable=False, server_default="0"))
        op.create_check_constraint("ck_items_reserved_within_quantity", "items", RESERVED_WITHIN_QUANTITY)
    else:
        # SQLite adds no constraint to an existing table, but a column may bring its own.
        op.execute(
            "ALTER TABLE items ADD COLUMN reserved_quantity INTEGER NOT NULL DEFAULT 0 "
            f"CONSTRAINT ck_items_reserved_within_quantity CHECK ({RESERVED_WITHIN_QUANTITY})"
        )
    _low_stock_column(LOW_STOCK)
    for name in ("reserved_delta", "reserved_after"):
        op.add_column("stock_movements", sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.add_column("stock_movements", sa.Column("reservation_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "reservations",
        sa.Column("id", ID, primary_key=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("reference", sa.String(100), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("create_time", sa.DateTime(), nullable=False),
        sa.Column("expire_time", sa.DateTime(), nullable=False),
        sa.Column("update_time", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_reservations_state_expire_time", "reservations", ["state", "expire_time"])
    op.create_index("ix_reservations_reference_id", "reservations", ["reference", "id"])
    op.create_table(
        "reservation_lines",
        sa.Column("reservation_id", ID, sa.ForeignKey("reservations.id"), primary_key=True),
        sa.Column("item_id", sa.BigInteger(), primary_key=True),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
    )
    op.create_index("ix_reservation_lines_item_id_reservation_id", "reservation_lines", ["item_id", "reservation_id"])


def downgrade() -> None:
    op.drop_table("reservation_lines")
    op.drop_table("reservations")
    for name in ("reservation_id", "reserved_after", "reserved_delta"):
        op.drop_column("stock_movements", name)
    _low_stock_column(LOW_STOCK_BEFORE)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("ck_items_reserved_within_quantity", "items")
    op.execute("ALTER TABLE items DROP COLUMN reserved_quantity")
