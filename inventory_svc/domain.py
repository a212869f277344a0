"""Items and their rules: plain dataclasses, no grpc, no SQL.

Over 300 lines: the item's errors (one class per reason of docs/api.md) sit beside the
rules that raise them, which a reader checks together."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import Enum, IntEnum
from typing import Any, Generic, TypeVar

from servicekit.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    FailedPrecondition,
    FieldChecks,
    InvalidField,
    NotFound,
    PreconditionViolation,
    ResourceExhausted,
    Unavailable,
)

NANOS_PER_UNIT = 1_000_000_000
MAX_QUANTITY_VALUE = 2**31 - 1  # quantities are int32 on the wire
_CURRENCY_CODE = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: `nanos` is the whole amount in billionths of a unit of `currency_code`."""

    currency_code: str
    nanos: int


@dataclass(frozen=True, slots=True)
class ItemFields:
    """Everything about an item that a client may write."""

    sku: str
    name: str
    price: Money
    description: str = ""
    category: str = ""
    brand: str = ""
    cost: Money | None = None
    quantity: int = 0
    low_stock_threshold: int = 0
    max_quantity: int | None = None
    is_active: bool = True
    weight_kg: float | None = None
    dimensions: str = ""
    customer_id: str = ""


MUTABLE_FIELDS = frozenset(f.name for f in fields(ItemFields))


@dataclass(frozen=True, slots=True)
class Item(ItemFields):
    """A stored item: its fields plus what the server assigns."""

    id: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    version: int = 1
    # Held by active reservations; never more than quantity.
    reserved_quantity: int = 0

    @property
    def etag(self) -> str:
        return str(self.version)

    @property
    def available_quantity(self) -> int:
        """What can still be reserved or sold."""
        return self.quantity - self.reserved_quantity

    @property
    def writable_fields(self) -> ItemFields:
        return ItemFields(**{name: getattr(self, name) for name in MUTABLE_FIELDS})


def item_subject(item_id: int) -> str:
    """An item's name as the subject of a google.rpc.PreconditionFailure."""
    return f"items/{item_id}"


class ItemNotFound(NotFound):
    reason = "ITEM_NOT_FOUND"

    def __init__(self, item_id: int) -> None:
        super().__init__(f"item {item_id} not found", metadata={"item_id": str(item_id)})

    @classmethod
    def among(cls, item_ids: Sequence[int]) -> ItemNotFound:
        """The answer of a batch that names missing items: every one of them."""
        error = cls(item_ids[0])
        DomainError.__init__(
            error,
            f"items not found: {', '.join(map(str, item_ids))}",
            metadata={"item_ids": ",".join(map(str, item_ids))},
        )
        return error


class SkuTaken(AlreadyExists):
    reason = "SKU_TAKEN"

    def __init__(self, sku: str) -> None:
        super().__init__(f"an item with sku {sku!r} already exists", metadata={"sku": sku})


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


class ItemHasReservations(FailedPrecondition):
    reason = "ITEM_HAS_RESERVATIONS"

    def __init__(self, item_id: int, reserved: int) -> None:
        super().__init__(
            f"item {item_id} has {reserved} units reserved: confirm or release its reservations before deleting it",
            metadata={"item_id": str(item_id), "reserved_quantity": str(reserved)},
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


class EtagMismatch(Conflict):
    """The item changed since the etag the client sent: re-read it and retry."""

    reason = "ETAG_MISMATCH"

    def __init__(self, item_id: int, etag: str) -> None:
        super().__init__(f"item {item_id} changed since etag {etag}: read it again", metadata={"item_id": str(item_id)})
        self.precondition_violations = (
            PreconditionViolation("ETAG", item_subject(item_id), f"etag {etag} is not the item's current etag"),
        )


class ItemKeptChanging(Conflict):
    reason = "ITEM_KEPT_CHANGING"

    def __init__(self, item_id: int) -> None:
        super().__init__(
            f"item {item_id} kept changing while being updated: try again", metadata={"item_id": str(item_id)}
        )


class RequestIdReused(InvalidField):
    reason = "REQUEST_ID_REUSED"

    def __init__(self) -> None:
        super().__init__("request_id", "was already used for a different request")


class TooManyWatches(ResourceExhausted):
    reason = "TOO_MANY_WATCHES"


class DatabaseUnavailable(Unavailable):
    reason = "DATABASE_UNAVAILABLE"


def check_text(field: str, value: str, max_length: int, required: bool = False) -> None:
    if "\x00" in value:
        raise InvalidField(field, "must not contain NUL characters")
    if required and not value.strip():
        raise InvalidField(field, "is required")
    if len(value) > max_length:
        raise InvalidField(field, f"must be at most {max_length} characters, got {len(value)}")


def _check_count(field: str, value: int) -> None:
    if not 0 <= value <= MAX_QUANTITY_VALUE:
        raise InvalidField(field, "must be zero or more")


def check_currency_code(field: str, code: str) -> None:
    if not _CURRENCY_CODE.fullmatch(code):
        raise InvalidField(field, "must be a three-letter ISO 4217 code such as USD")


def validate_item_fields(item: ItemFields, prefix: str = "item.") -> None:
    """Raises one InvalidField naming every request field that breaks a rule (the first
    broken rule of each field)."""
    checks = FieldChecks()
    checks.run(check_text, prefix + "sku", item.sku, 100, required=True)
    if not checks.violations and item.sku != item.sku.strip():
        checks.fail(prefix + "sku", "must not start or end with white space")
    checks.run(check_text, prefix + "name", item.name, 255, required=True)
    for name, max_length in (("description", 4000), ("category", 100), ("brand", 100), ("dimensions", 100)):
        checks.run(check_text, prefix + name, getattr(item, name), max_length)
    checks.run(check_text, prefix + "customer_id", item.customer_id, 100)
    checks.run(check_currency_code, prefix + "price.currency_code", item.price.currency_code)
    if item.price.nanos <= 0:
        checks.fail(prefix + "price", "must be greater than zero")
    if item.cost is not None:
        if item.cost.currency_code not in ("", item.price.currency_code):
            checks.fail(prefix + "cost.currency_code", "must be empty or the price's currency")
        if item.cost.nanos < 0:
            checks.fail(prefix + "cost", "must be zero or more")
    checks.run(_check_count, prefix + "quantity", item.quantity)
    checks.run(_check_count, prefix + "low_stock_threshold", item.low_stock_threshold)
    if item.max_quantity is not None and item.max_quantity <= item.low_stock_threshold:
        checks.fail(prefix + "max_quantity", "must be greater than low_stock_threshold")
    if item.weight_kg is not None and not (math.isfinite(item.weight_kg) and item.weight_kg >= 0):
        checks.fail(prefix + "weight_kg", "must be a finite number, zero or more")
    checks.raise_if_any()


def apply_changes(item: Item, changes: Mapping[str, Any]) -> ItemFields:
    """The item's writable fields with `changes` applied; the caller validates the result."""
    unknown = set(changes) - MUTABLE_FIELDS
    if unknown:
        raise InvalidField("update_mask", f"cannot change {', '.join(sorted(unknown))}")
    return replace(item.writable_fields, **changes)


@dataclass(frozen=True, slots=True)
class ItemQuery:
    """Filters of a listing: each one set narrows it, None or empty matches all."""

    category: str = ""
    brand: str = ""
    customer_id: str = ""
    is_active: bool | None = None
    name_contains: str = ""
    text: str = ""
    min_price: Money | None = None
    max_price: Money | None = None
    min_quantity: int | None = None
    max_quantity: int | None = None
    in_stock_only: bool = False
    low_stock_only: bool = False
    # Low stock means quantity <= this value instead of the item's own threshold.
    low_stock_at_most: int | None = None

    def check(self) -> None:
        """Raises one InvalidField naming every filter no item could match."""
        checks = FieldChecks()
        for field, value, max_length in (
            ("category", self.category, 100),
            ("brand", self.brand, 100),
            ("customer_id", self.customer_id, 100),
            ("name_contains", self.name_contains, 255),
            ("query", self.text, 100),
        ):
            checks.run(check_text, field, value, max_length)
        for field, bound in (("min_price", self.min_price), ("max_price", self.max_price)):
            if bound is not None and bound.currency_code:
                checks.run(check_currency_code, f"{field}.currency_code", bound.currency_code)
        checks.raise_if_any()


Entry = TypeVar("Entry")


@dataclass(frozen=True, slots=True)
class Page(Generic[Entry]):
    items: list[Entry]
    next_page_token: str
    total_size: int = 0


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
