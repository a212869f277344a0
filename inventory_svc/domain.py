"""Items and their rules: plain dataclasses, no grpc, no SQL. The item's errors (one class per
reason of docs/api.md) sit beside the rules that raise them; stock changes and the ledger
are in stock.py, reservations in reservation_rules.py."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
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


class ItemHasReservations(FailedPrecondition):
    reason = "ITEM_HAS_RESERVATIONS"

    def __init__(self, item_id: int, reserved: int) -> None:
        super().__init__(
            f"item {item_id} has {reserved} units reserved: confirm or release its reservations before deleting it",
            metadata={"item_id": str(item_id), "reserved_quantity": str(reserved)},
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


DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def check_id(value: int, field: str) -> None:
    if value <= 0:
        raise InvalidField(field, "must be greater than zero")


def page_limit(page_size: int) -> int:
    """A listing's page size: 0 means the default, more than the most is clamped."""
    if page_size < 0:
        raise InvalidField("page_size", "must be zero or more")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


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
