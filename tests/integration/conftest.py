"""Storage on its own: repositories and the unit of work on each database, no gRPC."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from inventory_svc.domain import Item, MovementReason, movement_between
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


@pytest.fixture
def postgres_database(empty_database: Engine) -> Engine:
    if empty_database.dialect.name != "postgresql":
        pytest.skip("only PostgreSQL has this")
    return empty_database
