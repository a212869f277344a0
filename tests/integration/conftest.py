"""Storage on its own: repositories and the unit of work on each database, no gRPC."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from inventory_svc.domain import Item
from inventory_svc.stock import MovementReason, movement_between
from inventory_svc.storage import SqlUnitOfWork
from tests.integration.builders import new_fields


@pytest.fixture
def add_item(empty_database: Engine) -> Callable[..., Item]:
    """Adds an item (and its ledger row, as the service does) in a committed unit of work."""

    def add(**overrides: object) -> Item:
        with SqlUnitOfWork(empty_database, for_write=True) as uow:
            item = uow.items.add(new_fields(**overrides))
            movement = movement_between(None, item, MovementReason.ITEM_CREATED)
            if movement is not None:
                uow.movements.add(movement)
            uow.commit()
        return item

    return add


# For what one database alone has: the test runs on that one only, rather than skip on the other.
on_postgresql_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
on_sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def postgres_database(empty_database: Engine) -> Engine:
    """The empty database of a test marked on_postgresql_only."""
    assert empty_database.dialect.name == "postgresql", "mark the test on_postgresql_only"
    return empty_database
