"""The unit of work: one transaction (or, for reads on PostgreSQL, autocommit statements),
its repositories, and database outages translated into Unavailable."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from inventory_svc.domain import DatabaseUnavailable
from inventory_svc.ports import UnitOfWorkFactory
from inventory_svc.storage.engine import WRITE_TRANSACTION_OPTION
from inventory_svc.storage.errors import lost_while_writing, unavailable_for
from inventory_svc.storage.repositories import SqlItemRepository, SqlRequestIdRepository, SqlStockMovementRepository
from inventory_svc.storage.reservation_repository import SqlReservationRepository
from inventory_svc.storage.writes_at_once import SqlWritesAtOnce


class SqlUnitOfWork:
    """One transaction. Leaving it always rolls back; only commit() keeps changes.

    A read on PostgreSQL runs each statement in autocommit instead: one round trip per
    statement, no BEGIN and ROLLBACK around it (the statements of one read, such as a page
    and its total, may then see different commits). A lost database connection becomes
    Unavailable, which clients may retry."""

    def __init__(
        self,
        engine: Engine,
        *,
        for_write: bool = False,
        at_once: bool = False,
        on_low_stock_events: Callable[[], None] | None = None,
    ) -> None:
        """`at_once`: the caller means to write through `at_once` (SqlWritesAtOnce), which
        then exists on PostgreSQL only; on SQLite this is an ordinary write transaction."""
        self._engine = engine
        self._for_write = for_write
        self._at_once = at_once and engine.dialect.name == "postgresql"
        self._on_low_stock_events = on_low_stock_events
        self.at_once: SqlWritesAtOnce | None = None

    def __enter__(self) -> SqlUnitOfWork:
        try:
            self._connection = self._engine.connect()  # with pre-ping, its round trip happens here
        except DBAPIError as error:
            # Refused ("too many clients already", a database that accepts no connections),
            # unreachable, or lost again at once: none of it was this call's doing.
            raise DatabaseUnavailable("the database cannot be reached; try again") from error
        except PoolTimeout as error:
            raise DatabaseUnavailable("every database connection of this replica is in use; try again") from error
        self._autocommit_driver: Any = None
        if self._for_write and not self._at_once:
            self._connection.execution_options(**{WRITE_TRANSACTION_OPTION: True})
        elif self._engine.dialect.name == "postgresql":
            # Straight on the driver: SQLAlchemy's isolation_level option would cost two SETs,
            # so two round trips, to switch to autocommit and back.
            self._autocommit_driver = self._connection.connection.driver_connection
            self._autocommit_driver.autocommit = True
        try:
            self._transaction = self._connection.begin()  # on SQLite a writer waits for the lock here
        except DBAPIError as error:
            self._release()
            unavailable = unavailable_for(error)
            if unavailable is None:
                raise
            raise unavailable from error
        self.items = SqlItemRepository(self._connection)
        self.movements = SqlStockMovementRepository(self._connection)
        self.request_ids = SqlRequestIdRepository(self._connection)
        self.reservations = SqlReservationRepository(self._connection)
        if self._at_once:
            self.at_once = SqlWritesAtOnce(self._connection)
        return self

    def __exit__(
        self, _type: type[BaseException] | None, error: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self._release()
        unavailable = unavailable_for(error)
        if unavailable is not None:
            raise unavailable from error

    def _release(self) -> None:
        driver = self._autocommit_driver
        try:
            if driver is not None and not driver.closed and not self._connection.invalidated:
                driver.autocommit = False  # back to the pool as it came
        finally:
            self._connection.close()

    def commit(self) -> None:
        try:
            self._transaction.commit()
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
            raise lost_while_writing("committing") from error
        events_added = self.movements.low_stock_events_added or (self.at_once and self.at_once.low_stock_events_added)
        if events_added and self._on_low_stock_events:
            self._on_low_stock_events()


def unit_of_work_factory(engine: Engine, *, on_low_stock_events: Callable[[], None]) -> UnitOfWorkFactory:
    """What the item service opens a unit of work with (mypy checks here that SqlUnitOfWork
    is the UnitOfWork the service expects)."""
    return partial(SqlUnitOfWork, engine, on_low_stock_events=on_low_stock_events)
