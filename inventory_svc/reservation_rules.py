"""Reservations and their rules: plain dataclasses, no grpc, no SQL.

A reservation holds units of up to 100 items for one checkout until it is confirmed (the
units are sold), released, or expires. Its errors sit beside the rules that raise them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from inventory_svc.domain import MAX_QUANTITY_VALUE, check_text, item_subject
from inventory_svc.stock import MovementReason
from servicekit.errors import FailedPrecondition, FieldChecks, InvalidField, NotFound, PreconditionViolation

MAX_RESERVATION_LINES = 100
DEFAULT_RESERVATION_TTL = timedelta(minutes=15)
MIN_RESERVATION_TTL = timedelta(seconds=1)
MAX_RESERVATION_TTL = timedelta(hours=24)
MAX_REFERENCE_LENGTH = 100


class ReservationState(str, Enum):
    ACTIVE = "active"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Ending:
    """How a way of ending moves each unit a reservation holds, and what the ledger calls it."""

    quantity_per_unit: int
    reserved_per_unit: int
    reason: MovementReason


ENDINGS = {
    ReservationState.CONFIRMED: Ending(-1, -1, MovementReason.SALE),  # the units leave stock
    ReservationState.RELEASED: Ending(0, -1, MovementReason.RESERVATION_RELEASED),
    ReservationState.EXPIRED: Ending(0, -1, MovementReason.RESERVATION_EXPIRED),
}


@dataclass(frozen=True, slots=True)
class ReservationLine:
    item_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    state: ReservationState
    lines: tuple[ReservationLine, ...]
    reference: str
    principal: str
    create_time: datetime
    expire_time: datetime
    update_time: datetime

    @classmethod
    def made(
        cls,
        reservation_id: int,
        lines: Sequence[ReservationLine],
        reference: str,
        principal: str,
        now: datetime,
        expire_time: datetime,
    ) -> Reservation:
        """A reservation as ReserveStock makes it: ACTIVE since `now`."""
        return cls(reservation_id, ReservationState.ACTIVE, tuple(lines), reference, principal, now, expire_time, now)

    def is_due(self, now: datetime) -> bool:
        """Active past its expire_time: it must expire before anything else is done with it."""
        return self.state is ReservationState.ACTIVE and self.expire_time <= now


@dataclass(frozen=True, slots=True)
class ReservationQuery:
    """Filters of ListReservations: each one set narrows it."""

    state: ReservationState | None = None
    reference: str = ""
    item_id: int = 0

    def check(self) -> None:
        checks = FieldChecks()
        checks.run(check_text, "reference", self.reference, MAX_REFERENCE_LENGTH)
        if self.item_id < 0:
            checks.fail("item_id", "must be greater than zero, or zero for any item")
        checks.raise_if_any()


def check_lines(lines: Sequence[ReservationLine], field: str = "lines") -> None:
    """Raises one InvalidField naming every broken line."""
    checks = FieldChecks()
    if not 1 <= len(lines) <= MAX_RESERVATION_LINES:
        checks.fail(field, f"must hold 1 to {MAX_RESERVATION_LINES} lines, got {len(lines)}")
    first_line_of: dict[int, int] = {}
    for index, line in enumerate(lines):
        if line.item_id <= 0:
            checks.fail(f"{field}[{index}].item_id", "must be greater than zero")
        elif line.item_id in first_line_of:
            checks.fail(f"{field}[{index}].item_id", f"names the item of {field}[{first_line_of[line.item_id]}] again")
        else:
            first_line_of[line.item_id] = index
        if not 1 <= line.quantity <= MAX_QUANTITY_VALUE:
            checks.fail(f"{field}[{index}].quantity", "must be 1 or more")
    checks.raise_if_any()


def check_ttl(ttl: timedelta | None, field: str = "ttl") -> timedelta:
    """The ttl to use: the default when none was given."""
    if ttl is None:
        return DEFAULT_RESERVATION_TTL
    if not MIN_RESERVATION_TTL <= ttl <= MAX_RESERVATION_TTL:
        raise InvalidField(field, "must be at least 1 second and at most 24 hours")
    return ttl


def reservation_subject(reservation_id: int) -> str:
    return f"reservations/{reservation_id}"


class ReservationNotFound(NotFound):
    reason = "RESERVATION_NOT_FOUND"

    def __init__(self, reservation_id: int) -> None:
        super().__init__(f"reservation {reservation_id} not found", metadata={"reservation_id": str(reservation_id)})


class ReservationNotActive(FailedPrecondition):
    """Confirmed, released or expired already: nothing more can be done with it."""

    reason = "RESERVATION_NOT_ACTIVE"

    def __init__(self, reservation_id: int, state: ReservationState) -> None:
        name = state.name
        super().__init__(
            f"reservation {reservation_id} is {name}, not ACTIVE: nothing was changed",
            metadata={"reservation_id": str(reservation_id), "state": name},
        )
        self.precondition_violations = (
            PreconditionViolation("STATE", reservation_subject(reservation_id), f"the reservation is {name}"),
        )


@dataclass(frozen=True, slots=True)
class ShortLine:
    item_id: int
    requested: int
    available: int


class InsufficientStock(FailedPrecondition):
    """Some lines ask for more than their item has available: nothing was reserved."""

    reason = "INSUFFICIENT_STOCK"

    def __init__(self, short: Sequence[ShortLine]) -> None:
        named = ", ".join(f"item {line.item_id} has {line.available} of {line.requested}" for line in short)
        super().__init__(
            f"not enough stock available: {named}; nothing was reserved",
            metadata={"item_ids": ",".join(str(line.item_id) for line in short)},
        )
        self.precondition_violations = tuple(
            PreconditionViolation(
                "STOCK", item_subject(line.item_id), f"{line.requested} asked, {line.available} available"
            )
            for line in short
        )
