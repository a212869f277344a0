"""Stock and its ledger: the errors of a stock change, the change itself and its rules, and
the ledger's movements with their low-stock state (judged on the available units). Plain
dataclasses, no grpc, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum, IntEnum

from inventory_svc.domain import (
    MAX_QUANTITY_VALUE,
    Item,
    ItemNotFound,
    check_text,
    item_subject,
)
from servicekit.errors import DomainError, FailedPrecondition, FieldChecks, PreconditionViolation


class StockWouldGoNegative(FailedPrecondition):
    reason = "STOCK_WOULD_GO_NEGATIVE"

    def __init__(self, item_id: int) -> None:
        super().__init__(
            f"item {item_id} has too little stock for this change: nothing was changed",
            metadata={"item_id": str(item_id)},
        )
        self.precondition_violations = (
            PreconditionViolation("STOCK", item_subject(item_id), "the change would take the quantity below zero"),
        )


class StockReserved(FailedPrecondition):
    """The change would leave fewer units than active reservations hold."""

    reason = "STOCK_RESERVED"

    def __init__(self, item_id: int, reserved: int) -> None:
        super().__init__(
            f"item {item_id} has {reserved} units reserved: the change would leave fewer than that in stock; "
            "nothing was changed",
            metadata={"item_id": str(item_id), "reserved_quantity": str(reserved)},
        )
        self.precondition_violations = (
            PreconditionViolation(
                "STOCK", item_subject(item_id), f"the change would take the quantity below the {reserved} reserved"
            ),
        )


class StockWouldOverflow(FailedPrecondition):
    reason = "STOCK_WOULD_OVERFLOW"

    def __init__(self, item_id: int) -> None:
        super().__init__(
            f"item {item_id} would hold more than {MAX_QUANTITY_VALUE} units: nothing was changed",
            metadata={"item_id": str(item_id), "max_quantity": str(MAX_QUANTITY_VALUE)},
        )
        self.precondition_violations = (
            PreconditionViolation(
                "STOCK", item_subject(item_id), f"the change would take the quantity past {MAX_QUANTITY_VALUE}"
            ),
        )


class MovementReason(str, Enum):
    RESTOCK = "restock"
    SALE = "sale"
    RETURN = "return"
    CORRECTION = "correction"
    DAMAGE = "damage"
    OTHER = "other"
    # Recorded by the service itself, never given by a client:
    ITEM_CREATED = "item_created"
    ITEM_DELETED = "item_deleted"
    ITEM_UPDATED = "item_updated"
    # Steps of a reservation (its confirmation is a SALE):
    RESERVED = "reserved"
    RESERVATION_RELEASED = "released"
    RESERVATION_EXPIRED = "expired"


CLIENT_REASONS = frozenset(
    {
        MovementReason.RESTOCK,
        MovementReason.SALE,
        MovementReason.RETURN,
        MovementReason.CORRECTION,
        MovementReason.DAMAGE,
        MovementReason.OTHER,
    }
)


MAX_NOTE_LENGTH = 500


@dataclass(frozen=True, slots=True)
class StockChange:
    """One change of AdjustQuantity or of a batch: a delta or a new quantity, and why."""

    item_id: int
    delta: int | None = None
    set_to: int | None = None
    reason: MovementReason | None = None
    note: str = ""


def checked_stock_change(change: StockChange, prefix: str = "") -> StockChange:
    """The change with its default reason, or one InvalidField naming every broken field
    (under `prefix`, such as "requests[2].")."""
    checks = FieldChecks()
    if change.item_id <= 0:
        checks.fail(prefix + "id", "must be greater than zero")
    if (change.delta is None) == (change.set_to is None):
        checks.fail(prefix + "change", "set exactly one of delta or set_quantity")
    if change.delta == 0:
        checks.fail(prefix + "delta", "must not be zero")
    if change.set_to is not None and change.set_to < 0:
        checks.fail(prefix + "set_quantity", "must be zero or more")
    reason = change.reason or (MovementReason.OTHER if change.set_to is None else MovementReason.CORRECTION)
    if reason not in CLIENT_REASONS:
        checks.fail(
            prefix + "reason",
            "is recorded by the server itself: use RESTOCK, SALE, RETURN, CORRECTION, DAMAGE or OTHER",
        )
    checks.run(check_text, prefix + "note", change.note, MAX_NOTE_LENGTH)
    checks.raise_if_any()
    return replace(change, reason=reason)


def stock_refusal(item: Item | None, change: StockChange) -> DomainError:
    """Why `change` could not be made to `item` as it is now (None: not there)."""
    if item is None:
        return ItemNotFound(change.item_id)
    if change.set_to is not None:
        return StockReserved(item.id, item.reserved_quantity)
    delta = change.delta or 0
    if item.quantity + delta < 0:
        return StockWouldGoNegative(item.id)
    if item.available_quantity + delta < 0:
        return StockReserved(item.id, item.reserved_quantity)
    return StockWouldOverflow(item.id)


class LowStockChange(IntEnum):
    NONE = 0
    BECAME_LOW = 1
    RECOVERED = 2


@dataclass(frozen=True, slots=True)
class StockMovement:
    """One change of an item's stock in the ledger. The deltas of an item add up to its
    quantity, its reserved_deltas to its reserved quantity."""

    item_id: int
    sku: str
    delta: int
    quantity_after: int
    reason: MovementReason
    low_stock_change: LowStockChange
    low_stock_threshold: int
    customer_id: str
    category: str
    note: str = ""
    principal: str = ""
    request_id: str = ""
    id: int = 0
    create_time: datetime | None = None
    reserved_delta: int = 0
    reserved_after: int = 0
    reservation_id: int = 0

    @property
    def available_after(self) -> int:
        return self.quantity_after - self.reserved_after


def is_low_on_stock(item: Item | None) -> bool:
    """Judged on what is available: units a reservation holds cannot be sold to anyone else."""
    return item is not None and item.is_active and item.available_quantity <= item.low_stock_threshold


def movement_between(
    before: Item | None,
    after: Item | None,
    reason: MovementReason,
    *,
    note: str = "",
    principal: str = "",
    request_id: str = "",
    reservation_id: int = 0,
) -> StockMovement | None:
    """The ledger entry for a change from `before` to `after` (None: not there), or None
    when neither the quantity, the reserved units nor the low-stock state changed."""
    quantity_before = before.quantity if before else 0
    quantity_after = after.quantity if after else 0
    reserved_before = before.reserved_quantity if before else 0
    reserved_after = after.reserved_quantity if after else 0
    was_low, is_low = is_low_on_stock(before), is_low_on_stock(after)
    if quantity_before == quantity_after and reserved_before == reserved_after and was_low == is_low:
        return None
    change = LowStockChange.NONE
    if is_low and not was_low:
        change = LowStockChange.BECAME_LOW
    elif was_low and not is_low:  # deleted too: a watcher must not keep it listed as low
        change = LowStockChange.RECOVERED
    state = after or before
    assert state is not None
    return StockMovement(
        item_id=state.id,
        sku=state.sku,
        delta=quantity_after - quantity_before,
        quantity_after=quantity_after,
        reason=reason,
        low_stock_change=change,
        low_stock_threshold=state.low_stock_threshold,
        customer_id=state.customer_id,
        category=state.category,
        note=note,
        principal=principal,
        request_id=request_id,
        reserved_delta=reserved_after - reserved_before,
        reserved_after=reserved_after,
        reservation_id=reservation_id,
    )
