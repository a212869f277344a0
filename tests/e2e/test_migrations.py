"""The alembic migrations build exactly the schema the repository maps, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from inventory_svc.repository import Base


def test_migrated_schema_matches_the_mapped_tables(engine):
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)

    # The PostgreSQL-only trigram indexes are expressions the mapping does not declare.
    differences = [d for d in differences if not (d[0] == "remove_index" and d[1].name.endswith("_trgm"))]
    assert differences == []
