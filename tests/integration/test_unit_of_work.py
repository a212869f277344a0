"""The unit of work on each database: leaving it rolls back, commit keeps, and a database
fault becomes Unavailable, which clients retry."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from sqlalchemy import Engine, func, select

from inventory_svc.settings import InventorySettings
from inventory_svc.stock import MovementReason, movement_between
from inventory_svc.storage import SqlUnitOfWork, build_engine
from inventory_svc.storage import engine as storage_engine
from servicekit.errors import Unavailable
from tests.integration.builders import new_fields
from tests.integration.conftest import on_postgresql_only, on_sqlite_only


def test_leaving_a_unit_of_work_without_commit_rolls_back(empty_database: Engine):
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        added = uow.items.add(new_fields())

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get(added.id) is None


def test_commit_keeps_what_the_unit_of_work_wrote(empty_database: Engine):
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        added = uow.items.add(new_fields())
        uow.commit()

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get(added.id) == added


def test_an_error_inside_a_unit_of_work_rolls_back_and_reaches_the_caller(empty_database: Engine, add_item):
    item = add_item(quantity=5)

    with pytest.raises(ZeroDivisionError), SqlUnitOfWork(empty_database, for_write=True) as uow:
        uow.items.set_quantity(item.id, 99)
        _ = 1 / 0

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get(item.id) == item


def test_low_stock_events_are_announced_after_commit_only(empty_database: Engine, add_item):
    item = add_item(quantity=5, low_stock_threshold=3)
    announced: list[str] = []

    for commit in (False, True):
        with SqlUnitOfWork(empty_database, for_write=True, on_low_stock_events=lambda: announced.append("!")) as uow:
            after = uow.items.add_to_quantity(item.id, -3, 1000)
            movement = movement_between(item, after, MovementReason.SALE)
            assert movement is not None
            uow.movements.add(movement)
            if commit:
                uow.commit()
        assert announced == (["!"] if commit else [])


@on_postgresql_only
def test_a_connection_lost_inside_a_unit_of_work_is_unavailable_and_the_next_one_reconnects(
    postgres_database: Engine, inventory_settings: InventorySettings, add_item
):
    item = add_item()
    # One pooled connection, so the unit of work gets the very connection whose backend is known.
    engine = build_engine(dataclasses.replace(inventory_settings, db_pool_size=1))
    try:
        with engine.connect() as connection:
            backend = connection.execute(select(func.pg_backend_pid())).scalar_one()

        with pytest.raises(Unavailable, match="connection was lost"), SqlUnitOfWork(engine) as uow:
            with postgres_database.connect() as admin:
                assert admin.execute(select(func.pg_terminate_backend(backend))).scalar_one()
            uow.items.get(item.id)

        with SqlUnitOfWork(engine) as uow:
            assert uow.items.get(item.id) == item
    finally:
        engine.dispose()


@on_sqlite_only
def test_a_sqlite_writer_waiting_past_the_busy_timeout_is_unavailable(
    empty_database: Engine, inventory_settings: InventorySettings, add_item, monkeypatch
):
    item = add_item(quantity=5)
    monkeypatch.setattr(storage_engine, "SQLITE_BUSY_TIMEOUT_MS", 100)  # not the 10 s a server waits
    engine = build_engine(inventory_settings)
    holding, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with SqlUnitOfWork(empty_database, for_write=True) as uow:
            uow.items.set_quantity(item.id, 6)
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(Unavailable, match="busy"), SqlUnitOfWork(engine, for_write=True) as uow:
            uow.items.set_quantity(item.id, 7)
    finally:
        release.set()
        holder.join(10)
        engine.dispose()

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get(item.id) == item  # neither writer committed
