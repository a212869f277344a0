"""Statements built once: the filters of a listing as conditions on named parameters, the
page and count statements of each combination of filters, and the hottest calls' statements.

A statement is built once per combination of filters, not per call: building and keying one
costs more CPU than the database spends answering it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, insert, or_, select, true, update

from inventory_svc.domain import ItemQuery
from inventory_svc.storage.tables import ITEM, items, stock_movements

# Columns searched by the free-text query; PostgreSQL has a trigram index on lower() of each.
TEXT_SEARCH_COLUMNS = ("name", "sku", "brand", "category")
_LIKE_ESCAPE = "/"


def utcnow() -> datetime:
    return datetime.now(UTC)


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, case-folded, with % and _ taken literally."""
    escaped = (
        text.lower()
        .replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


def _icontains(column: Any, parameter: str) -> ColumnElement[bool]:
    """lower(column) LIKE the pattern bound as `parameter` (made by contains_pattern)."""
    return func.lower(column).like(bindparam(parameter), escape=_LIKE_ESCAPE)


# Each filter of a listing as a condition on named parameters.
CONDITION_FOR_FILTER: dict[str, Callable[[Any], ColumnElement[bool]]] = {
    "category": lambda c: c.category == bindparam("category"),
    "brand": lambda c: c.brand == bindparam("brand"),
    "customer_id": lambda c: c.customer_id == bindparam("customer_id"),
    "is_active": lambda c: c.is_active == bindparam("is_active"),
    "name_pattern": lambda c: _icontains(c.name, "name_pattern"),
    "text_pattern": lambda c: or_(*(_icontains(c[name], "text_pattern") for name in TEXT_SEARCH_COLUMNS)),
    "min_price_nanos": lambda c: c.price_nanos >= bindparam("min_price_nanos"),
    "min_price_currency": lambda c: c.currency_code == bindparam("min_price_currency"),
    "max_price_nanos": lambda c: c.price_nanos <= bindparam("max_price_nanos"),
    "max_price_currency": lambda c: c.currency_code == bindparam("max_price_currency"),
    "min_quantity": lambda c: c.quantity >= bindparam("min_quantity"),
    "max_quantity": lambda c: c.quantity <= bindparam("max_quantity"),
    "in_stock_only": lambda c: c.quantity - c.reserved_quantity > 0,
    # is_low_stock leaves inactive items out. The bare column renders as each database's index
    # predicate (tables.LOW_STOCK_PREDICATE_*), so that the planner uses the partial index.
    "low_stock_only": lambda c: c.is_low_stock,
    "low_stock_at_most": lambda c: c.quantity - c.reserved_quantity <= bindparam("low_stock_at_most"),
}
_FLAG_FILTERS = frozenset({"in_stock_only", "low_stock_only"})  # conditions without a parameter
# Substring filters: the page of such a query already scans every match (a bitmap of the
# trigram indexes, then a sort), so counting them in that same scan halves its cost.
SCANNING_FILTERS = frozenset({"name_pattern", "text_pattern"})


def filter_values(query: ItemQuery) -> dict[str, Any]:
    """The filters a query sets, by name, with their parameter values."""
    values: dict[str, Any] = {}
    for name in ("category", "brand", "customer_id"):
        if getattr(query, name):
            values[name] = getattr(query, name)
    if query.is_active is not None:
        values["is_active"] = query.is_active
    if query.name_contains:
        values["name_pattern"] = contains_pattern(query.name_contains)
    if query.text:
        values["text_pattern"] = contains_pattern(query.text)
    for prefix, bound in (("min_price", query.min_price), ("max_price", query.max_price)):
        if bound is not None:
            values[f"{prefix}_nanos"] = bound.nanos
            if bound.currency_code:
                values[f"{prefix}_currency"] = bound.currency_code
    for name in ("min_quantity", "max_quantity", "low_stock_at_most"):
        if getattr(query, name) is not None:
            values[name] = getattr(query, name)
    for name in _FLAG_FILTERS:
        if getattr(query, name):
            values[name] = True
    return values


def shape(values: dict[str, Any]) -> tuple[str, ...]:
    """Which filters `values` sets, in a fixed order: the key of the statements built for it."""
    return tuple(name for name in CONDITION_FOR_FILTER if name in values)


def parameters(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name not in _FLAG_FILTERS}


def _where(shape: tuple[str, ...]) -> ColumnElement[bool]:
    return and_(true(), *(CONDITION_FOR_FILTER[name](items.c) for name in shape))


@functools.lru_cache(maxsize=256)
def page_statement(shape: tuple[str, ...]) -> Select[Any]:
    return (
        select(*ITEM)
        .where(_where(shape), items.c.id > bindparam("after_id"))
        .order_by(items.c.id)
        .limit(bindparam("limit"))
    )


@functools.lru_cache(maxsize=256)
def counted_first_page_statement(shape: tuple[str, ...]) -> Select[Any]:
    """The first page with the number of all matches in its last column, from one scan."""
    return select(*ITEM, func.count().over()).where(_where(shape)).order_by(items.c.id).limit(bindparam("limit"))


@functools.lru_cache(maxsize=256)
def count_statement(shape: tuple[str, ...]) -> Select[Any]:
    return select(func.count()).select_from(items).where(_where(shape))


# The statements of the hottest calls, built once.
GET_ITEM = select(*ITEM).where(items.c.id == bindparam("item_id"))
# Moves an item's quantity and reserved units by their deltas, if the available units stay
# zero or more, the reserved ones too, and the quantity within its ceiling.
ADD_TO_QUANTITY_UNRETURNED = (
    update(items)
    .where(
        items.c.id == bindparam("item_id"),
        items.c.quantity - items.c.reserved_quantity >= bindparam("available_at_least"),
        items.c.quantity <= bindparam("at_most"),
        items.c.reserved_quantity >= bindparam("reserved_at_least"),
    )
    .values(
        quantity=items.c.quantity + bindparam("delta"),
        reserved_quantity=items.c.reserved_quantity + bindparam("reserved_delta"),
        update_time=bindparam("now"),
        version=items.c.version + 1,
    )
)
ADD_TO_QUANTITY = ADD_TO_QUANTITY_UNRETURNED.returning(*ITEM)
ADD_MOVEMENT = insert(stock_movements)


def quantity_change(item_id: int, delta: int, ceiling: int, reserved_delta: int = 0) -> dict[str, Any]:
    """The parameters of ADD_TO_QUANTITY: the bounds moved to the parameter side, so that no
    database adds in int32 and overflows, and kept within int32 themselves (min()), which
    drivers that bind int32 (asyncpg) need."""
    return {
        "item_id": item_id,
        "delta": delta,
        "reserved_delta": reserved_delta,
        "available_at_least": reserved_delta - delta,
        "reserved_at_least": -reserved_delta,
        "at_most": min(ceiling, ceiling - delta),
        "now": utcnow(),
    }
