"""The alembic migrations build exactly the schema the repository maps, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from inventory_svc.settings import InventorySettings
from inventory_svc.storage import Base
from tests.helpers import migrated_engine


def test_migrated_schema_matches_the_mapped_tables(engine):
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    # The PostgreSQL-only trigram indexes are expressions the mapping does not declare.
    differences = [d for d in differences if not (d[0] == "remove_index" and d[1].name.endswith("_trgm"))]
    assert differences == []


def test_no_index_of_items_involves_quantity_so_stock_changes_are_hot_updates(postgres_url):
    # An index on quantity, or one whose predicate reads it, makes every stock change write a
    # new entry into all of items' indexes (trigram ones included) instead of the row alone.
    with migrated_engine(InventorySettings(database_url=postgres_url)) as engine, engine.connect() as connection:
        definitions = connection.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'items'")).scalars()
        involving_quantity = [definition for definition in definitions if "quantity" in definition]

    assert involving_quantity == []
