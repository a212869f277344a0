"""PostgreSQL tells every replica which item changed (NOTIFY inventory_item_changes, the
id as payload, or '*' after a TRUNCATE), from triggers, so that no way of changing an item
can skip it: each replica drops its cached copy.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # the embedded SQLite default keeps no cache to invalidate
    op.execute(
        """
        CREATE FUNCTION inventory_notify_item_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('inventory_item_changes', OLD.id::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER items_notify_change AFTER UPDATE OR DELETE ON items "
        "FOR EACH ROW EXECUTE FUNCTION inventory_notify_item_change()"
    )
    op.execute(
        """
        CREATE FUNCTION inventory_notify_items_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('inventory_item_changes', '*');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER items_notify_truncate AFTER TRUNCATE ON items "
        "FOR EACH STATEMENT EXECUTE FUNCTION inventory_notify_items_truncated()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER items_notify_truncate ON items")
    op.execute("DROP FUNCTION inventory_notify_items_truncated()")
    op.execute("DROP TRIGGER items_notify_change ON items")
    op.execute("DROP FUNCTION inventory_notify_item_change()")
