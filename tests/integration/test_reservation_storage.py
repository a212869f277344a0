"""Reservations in storage on each database: the sweep's scan skips what another replica
holds, and the schema itself refuses to reserve more than is in stock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError

from inventory_svc.reservation_rules import ReservationLine, ReservationState
from inventory_svc.storage import SqlUnitOfWork
from inventory_svc.storage.tables import items
from tests.integration.conftest import on_postgresql_only

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def add_reservation(engine: Engine, item_id: int, expire_time: datetime) -> int:
    with SqlUnitOfWork(engine, for_write=True) as uow:
        reservation = uow.reservations.add([ReservationLine(item_id, 1)], "cart", "p", NOW, expire_time)
        uow.commit()
    return reservation.id


def test_only_active_reservations_past_their_time_are_due(empty_database: Engine, add_item):
    item = add_item(quantity=10)
    due = add_reservation(empty_database, item.id, NOW - timedelta(seconds=1))
    add_reservation(empty_database, item.id, NOW + timedelta(minutes=5))
    ended = add_reservation(empty_database, item.id, NOW - timedelta(seconds=1))
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        uow.reservations.set_state(ended, ReservationState.RELEASED, NOW)
        uow.commit()

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert [reservation.id for reservation in uow.reservations.take_due(NOW, 10)] == [due]


@on_postgresql_only
def test_a_sweep_skips_the_due_reservations_another_replica_holds(postgres_database: Engine, add_item):
    item = add_item(quantity=10)
    first, second = (add_reservation(postgres_database, item.id, NOW - timedelta(seconds=s)) for s in (2, 1))

    with SqlUnitOfWork(postgres_database, for_write=True) as one_replica:
        held = [reservation.id for reservation in one_replica.reservations.take_due(NOW, 1)]
        with SqlUnitOfWork(postgres_database, for_write=True) as another:
            taken = [reservation.id for reservation in another.reservations.take_due(NOW, 10)]

    assert (held, taken) == ([first], [second])


def test_the_schema_refuses_more_units_reserved_than_in_stock(empty_database: Engine, add_item):
    item = add_item(quantity=3)

    # Past every check of the code: a statement of its own.
    with empty_database.begin() as connection, pytest.raises(IntegrityError):
        connection.execute(update(items).where(items.c.id == item.id).values(reserved_quantity=4))


def test_the_quantity_cannot_go_below_its_reserved_units_through_the_repository(empty_database: Engine, add_item):
    item = add_item(quantity=5)
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.items.add_to_quantity(item.id, 0, 2**31 - 1, reserved_delta=4) is not None
        assert uow.items.add_to_quantity(item.id, -2, 2**31 - 1) is None  # 1 available
        assert uow.items.set_quantity(item.id, 3) is None
        changed = uow.items.add_to_quantity(item.id, -1, 2**31 - 1)
        uow.commit()

    assert changed is not None
    assert (changed.quantity, changed.reserved_quantity, changed.available_quantity) == (4, 4, 0)
