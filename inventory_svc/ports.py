"""What the use cases need of storage, as Protocols: storage/ implements them, service.py and
watches.py see nothing else of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, TypeAlias

from inventory_svc.domain import Item, ItemFields, ItemQuery
from inventory_svc.reservation_rules import Reservation, ReservationLine, ReservationQuery, ReservationState
from inventory_svc.stock import MovementReason, StockMovement

# What a request_id's record keeps as the first result of its request.
StoredResult: TypeAlias = "Item | Reservation | tuple[Item, ...]"


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """What a request_id already stands for: its request's fingerprint and first result."""

    method: str
    fingerprint: str
    result: StoredResult | None


class ItemRepository(Protocol):
    def lock_new_ids(self) -> None: ...
    def add(self, fields: ItemFields) -> Item: ...
    def get(self, item_id: int) -> Item | None: ...
    def get_for_update(self, item_id: int) -> Item | None: ...
    def lock(self, item_ids: Sequence[int]) -> None: ...
    def get_many(self, item_ids: Sequence[int]) -> dict[int, Item]: ...
    def list_page(self, query: ItemQuery, after_id: int, limit: int) -> list[Item]: ...
    def first_page(self, query: ItemQuery, limit: int) -> tuple[list[Item], int]: ...
    def replace_fields(self, item_id: int, expected_version: int, fields: ItemFields) -> Item | None: ...
    def delete(self, item_id: int, expected_version: int | None) -> Item | None: ...
    def add_to_quantity(self, item_id: int, delta: int, ceiling: int, reserved_delta: int = 0) -> Item | None: ...
    def set_quantity(self, item_id: int, quantity: int) -> Item | None: ...


class ReservationRepository(Protocol):
    def add(
        self,
        lines: Sequence[ReservationLine],
        reference: str,
        principal: str,
        now: datetime,
        expire_time: datetime,
    ) -> Reservation: ...
    def get(self, reservation_id: int, *, for_update: bool = False) -> Reservation | None: ...
    def set_state(self, reservation_id: int, state: ReservationState, now: datetime) -> None: ...
    def set_expire_time(self, reservation_id: int, expire_time: datetime, now: datetime) -> None: ...
    def list_page(self, query: ReservationQuery, after_id: int, limit: int) -> list[Reservation]: ...
    def take_due(self, now: datetime, limit: int) -> list[Reservation]: ...


class StockMovementRepository(Protocol):
    def add(self, movement: StockMovement) -> None: ...
    def list_page(self, item_id: int, before_id: int | None, limit: int) -> list[StockMovement]: ...
    def low_stock_events(self, after_id: int, customer_id: str, category: str, limit: int) -> list[StockMovement]: ...
    def latest_low_stock_event_id(self) -> int: ...


class RequestIdRepository(Protocol):
    def claim(self, request_id: str, method: str, fingerprint: str, ttl_s: float) -> StoredRequest | None: ...
    def complete(self, request_id: str, result: StoredResult) -> None: ...
    def purge_expired(self, ttl_s: float) -> int: ...


class WritesAtOnce(Protocol):
    """Writes made in one statement with their ledger row and request_id record; each
    answers None when it wrote nothing, and the caller then takes the ordinary way."""

    def add_to_quantity(
        self,
        item_id: int,
        delta: int,
        ceiling: int,
        reason: MovementReason,
        *,
        note: str,
        principal: str,
        request_id: str,
        method: str,
        fingerprint: str,
    ) -> Item | None: ...
    def add_item(
        self, fields: ItemFields, *, principal: str, request_id: str, method: str, fingerprint: str
    ) -> Item | None: ...
    def reserve(
        self,
        lines: Sequence[ReservationLine],
        reference: str,
        principal: str,
        now: datetime,
        expire_time: datetime,
        *,
        request_id: str,
        method: str,
        fingerprint: str,
    ) -> Reservation | None: ...
    def end_reservation(
        self,
        reservation_id: int,
        state: ReservationState,
        now: datetime,
        *,
        principal: str,
        request_id: str,
        method: str,
        fingerprint: str,
    ) -> Reservation | None: ...


class UnitOfWork(Protocol):
    """One transaction: leaving it rolls back whatever commit() did not keep."""

    # Read-only: a unit of work may hold any repository of the right shape.
    @property
    def items(self) -> ItemRepository: ...
    @property
    def movements(self) -> StockMovementRepository: ...
    @property
    def request_ids(self) -> RequestIdRepository: ...
    @property
    def reservations(self) -> ReservationRepository: ...
    @property
    def at_once(self) -> WritesAtOnce | None: ...

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None: ...
    def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    """A new unit of work; with `at_once` its `at_once` is a WritesAtOnce where the database
    can (None where it cannot)."""

    def __call__(self, *, for_write: bool = False, at_once: bool = False) -> UnitOfWork: ...
