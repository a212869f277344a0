"""The only module that speaks SQL: the items table, its repository and the unit of work."""

from __future__ import annotations

import functools
import json
import logging
import select as select_module
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    Computed,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    Select,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy import (
    false as false_,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from inventory_svc.domain import (
    MUTABLE_FIELDS,
    Item,
    ItemFields,
    ItemQuery,
    LowStockChange,
    Money,
    MovementReason,
    StockMovement,
)
from servicekit.errors import AlreadyExists, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """What a request_id already stands for: its request's fingerprint and first result."""

    method: str
    fingerprint: str
    result: Item | None


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC without a zone (the same on both databases), reads back zone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value else value


class Base(DeclarativeBase):
    pass


# The low-stock filter as each database renders it (see _CONDITION_FOR_FILTER), so that the planner
# matches the partial index below to the query.
LOW_STOCK_PREDICATE_POSTGRESQL = "is_low_stock"
LOW_STOCK_PREDICATE_SQLITE = "is_low_stock = 1"


class ItemRow(Base):
    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_items_quantity_not_negative"),
        UniqueConstraint("sku", name="uq_items_sku"),
        Index("ix_items_customer_id_id", "customer_id", "id"),
        Index("ix_items_category_id", "category", "id"),
        Index("ix_items_brand_id", "brand", "id"),
        Index("ix_items_price_nanos", "price_nanos"),
        Index("ix_items_is_active", "is_active"),
        # No index holds quantity, so that a stock change is a HOT update on PostgreSQL (no
        # index entries written): the low-stock index filters on a column computed from it.
        Index(
            "ix_items_low_stock_id",
            "id",
            postgresql_where=text(LOW_STOCK_PREDICATE_POSTGRESQL),
            sqlite_where=text(LOW_STOCK_PREDICATE_SQLITE),
        ),
        # Ids are never reused, so a client never mistakes a new item for a deleted one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(100))
    brand: Mapped[str] = mapped_column(String(100))
    currency_code: Mapped[str] = mapped_column(String(3))
    price_nanos: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    low_stock_threshold: Mapped[int] = mapped_column(Integer)
    max_quantity: Mapped[int | None] = mapped_column(Integer)
    is_active: Mapped[bool] = mapped_column(Boolean)
    weight_kg: Mapped[float | None] = mapped_column(Float)
    dimensions: Mapped[str] = mapped_column(String(100))
    customer_id: Mapped[str] = mapped_column(String(100))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer)
    # Changes only when an item crosses its threshold (or is (de)activated); never written.
    is_low_stock: Mapped[bool] = mapped_column(Boolean, Computed("is_active AND quantity <= low_stock_threshold"))


class StockMovementRow(Base):
    __tablename__ = "stock_movements"
    __table_args__ = (
        Index("ix_stock_movements_item_id_id", "item_id", "id"),
        Index("ix_stock_movements_low_stock_change_id", "low_stock_change", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # No foreign key: the ledger outlives a deleted item.
    item_id: Mapped[int] = mapped_column(BigInteger)
    sku: Mapped[str] = mapped_column(String(100))
    delta: Mapped[int] = mapped_column(Integer)
    quantity_after: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(20))
    low_stock_change: Mapped[int] = mapped_column(SmallInteger)
    low_stock_threshold: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(100))
    note: Mapped[str] = mapped_column(String(500))
    principal: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(36))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


class RequestIdRow(Base):
    """Idempotency keys: the first result of each request_id, for replays."""

    __tablename__ = "request_ids"
    __table_args__ = (Index("ix_request_ids_create_time", "create_time"),)

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    method: Mapped[str] = mapped_column(String(50))
    fingerprint: Mapped[str] = mapped_column(String(32))
    response: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


items = ItemRow.__table__
stock_movements = StockMovementRow.__table__
request_ids = RequestIdRow.__table__
LOW_STOCK_CHANNEL = "inventory_low_stock"
# Notified by the triggers of migration 0003 with the changed item's id, or ALL_ITEMS.
ITEM_CHANGES_CHANNEL = "inventory_item_changes"
ALL_ITEMS = "*"
# Each listener NOTIFYs this channel itself to prove that notifications still reach it.
PROBE_CHANNEL = "inventory_listener_probe"
# PostgreSQL hands out sequence values before commit, so ids need not arrive in commit
# order, and a reader paging (or watching) by id could pass an id whose row commits later.
# Taking these transaction-scoped locks right before the INSERT makes the ids of items, and
# of low-stock events, increase in commit order. SQLite serialises its writers anyway.
ITEM_IDS_LOCK = 7_123_001
LOW_STOCK_EVENT_IDS_LOCK = 7_123_002


def _lock_id_order(connection: Connection, lock: int) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(lock)))


# Columns searched by the free-text query; PostgreSQL has a trigram index on lower() of each.
TEXT_SEARCH_COLUMNS = ("name", "sku", "brand", "category")
_LIKE_ESCAPE = "/"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _contains_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, case-folded, with % and _ taken literally."""
    escaped = (
        text.lower()
        .replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


def _row_values(fields: ItemFields) -> dict[str, Any]:
    return {
        "sku": fields.sku,
        "name": fields.name,
        "description": fields.description,
        "category": fields.category,
        "brand": fields.brand,
        "currency_code": fields.price.currency_code,
        "price_nanos": fields.price.nanos,
        "cost_nanos": fields.cost.nanos if fields.cost else None,
        "quantity": fields.quantity,
        "low_stock_threshold": fields.low_stock_threshold,
        "max_quantity": fields.max_quantity,
        "is_active": fields.is_active,
        "weight_kg": fields.weight_kg,
        "dimensions": fields.dimensions,
        "customer_id": fields.customer_id,
    }


# The columns an Item is read from, in the order _item_from_row unpacks them (is_low_stock
# is derived, and an Item derives it itself).
ITEM_COLUMNS = (
    "id",
    "sku",
    "name",
    "description",
    "category",
    "brand",
    "currency_code",
    "price_nanos",
    "cost_nanos",
    "quantity",
    "low_stock_threshold",
    "max_quantity",
    "is_active",
    "weight_kg",
    "dimensions",
    "customer_id",
    "create_time",
    "update_time",
    "version",
)
_ITEM = tuple(items.c[name] for name in ITEM_COLUMNS)


def _item_from_row(row: Any) -> Item:
    # Unpacked by position: reading a Row's fields by name costs more than the rest of this.
    (
        item_id,
        sku,
        name,
        description,
        category,
        brand,
        currency,
        price_nanos,
        cost_nanos,
        quantity,
        low_stock_threshold,
        max_quantity,
        is_active,
        weight_kg,
        dimensions,
        customer_id,
        create_time,
        update_time,
        version,
    ) = row
    return Item(
        id=item_id,
        sku=sku,
        name=name,
        description=description,
        category=category,
        brand=brand,
        price=Money(currency, price_nanos),
        cost=None if cost_nanos is None else Money(currency, cost_nanos),
        quantity=quantity,
        low_stock_threshold=low_stock_threshold,
        max_quantity=max_quantity,
        is_active=is_active,
        weight_kg=weight_kg,
        dimensions=dimensions,
        customer_id=customer_id,
        create_time=create_time,
        update_time=update_time,
        version=version,
    )


def _icontains(column: Any, parameter: str) -> ColumnElement[bool]:
    """lower(column) LIKE the pattern bound as `parameter` (made by _contains_pattern)."""
    return func.lower(column).like(bindparam(parameter), escape=_LIKE_ESCAPE)


# Each filter of a listing as a condition on named parameters. A statement is built once
# per combination of filters (see _page_statement), not per call: building and keying one
# costs more CPU than the database spends answering it.
_CONDITION_FOR_FILTER: dict[str, Callable[[Any], ColumnElement[bool]]] = {
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
    "in_stock_only": lambda c: c.quantity > 0,
    # is_low_stock leaves inactive items out. The bare column renders as each database's index
    # predicate (LOW_STOCK_PREDICATE_*), so that the planner uses the partial index.
    "low_stock_only": lambda c: c.is_low_stock,
    "low_stock_at_most": lambda c: c.quantity <= bindparam("low_stock_at_most"),
}
_FLAG_FILTERS = frozenset({"in_stock_only", "low_stock_only"})  # conditions without a parameter


def _filter_values(query: ItemQuery) -> dict[str, Any]:
    """The filters a query sets, by name, with their parameter values."""
    values: dict[str, Any] = {}
    for name in ("category", "brand", "customer_id"):
        if getattr(query, name):
            values[name] = getattr(query, name)
    if query.is_active is not None:
        values["is_active"] = query.is_active
    if query.name_contains:
        values["name_pattern"] = _contains_pattern(query.name_contains)
    if query.text:
        values["text_pattern"] = _contains_pattern(query.text)
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


def _shape(values: dict[str, Any]) -> tuple[str, ...]:
    return tuple(name for name in _CONDITION_FOR_FILTER if name in values)


def _parameters(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name not in _FLAG_FILTERS}


def _where(shape: tuple[str, ...]) -> ColumnElement[bool]:
    return and_(true(), *(_CONDITION_FOR_FILTER[name](items.c) for name in shape))


@functools.lru_cache(maxsize=256)
def _page_statement(shape: tuple[str, ...]) -> Select[Any]:
    return (
        select(*_ITEM)
        .where(_where(shape), items.c.id > bindparam("after_id"))
        .order_by(items.c.id)
        .limit(bindparam("limit"))
    )


@functools.lru_cache(maxsize=256)
def _counted_first_page_statement(shape: tuple[str, ...]) -> Select[Any]:
    """The first page with the number of all matches in its last column, from one scan."""
    return select(*_ITEM, func.count().over()).where(_where(shape)).order_by(items.c.id).limit(bindparam("limit"))


# Substring filters: the page of such a query already scans every match (a bitmap of the
# trigram indexes, then a sort), so counting them in that same scan halves its cost.
_SCANNING_FILTERS = frozenset({"name_pattern", "text_pattern"})


@functools.lru_cache(maxsize=256)
def _count_statement(shape: tuple[str, ...]) -> Select[Any]:
    return select(func.count()).select_from(items).where(_where(shape))


def _is_unique_violation(error: IntegrityError) -> bool:
    pgcode = getattr(error.orig, "pgcode", None)
    if pgcode is not None:
        return bool(pgcode == "23505")
    return "UNIQUE constraint failed" in str(error.orig)


# The statements of the hottest calls, built once (see _CONDITION_FOR_FILTER for why).
_GET_ITEM = select(*_ITEM).where(items.c.id == bindparam("item_id"))
_ADD_TO_QUANTITY_UNRETURNED = (
    update(items)
    .where(
        items.c.id == bindparam("item_id"),
        items.c.quantity >= bindparam("at_least"),
        items.c.quantity <= bindparam("at_most"),
    )
    .values(quantity=items.c.quantity + bindparam("delta"), update_time=bindparam("now"), version=items.c.version + 1)
)
_ADD_TO_QUANTITY = _ADD_TO_QUANTITY_UNRETURNED.returning(*_ITEM)
_ADD_MOVEMENT = insert(stock_movements)


def _quantity_change(item_id: int, delta: int, ceiling: int) -> dict[str, Any]:
    """The parameters of _ADD_TO_QUANTITY: the bounds moved to the parameter side, so that no
    database adds in int32 and overflows, and kept within int32 themselves (min()), which
    drivers that bind int32 (asyncpg) need."""
    return {
        "item_id": item_id,
        "delta": delta,
        "at_least": -delta,
        "at_most": min(ceiling, ceiling - delta),
        "now": _utcnow(),
    }


class SqlItemRepository:
    """Items in one transaction. Missing rows come back as None; rules live in the service."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add(self, fields: ItemFields) -> Item:
        now = _utcnow()
        statement = (
            insert(items).values(**_row_values(fields), create_time=now, update_time=now, version=1).returning(*_ITEM)
        )
        _lock_id_order(self._connection, ITEM_IDS_LOCK)
        try:
            # A savepoint keeps the transaction usable after a clash (PostgreSQL aborts it otherwise).
            with self._connection.begin_nested():
                row = self._connection.execute(statement).one()
        except IntegrityError as error:
            if _is_unique_violation(error):
                raise AlreadyExists(f"an item with sku {fields.sku!r} already exists") from None
            raise
        return _item_from_row(row)

    def get(self, item_id: int) -> Item | None:
        row = self._connection.execute(_GET_ITEM, {"item_id": item_id}).first()
        return _item_from_row(row) if row else None

    def get_for_update(self, item_id: int) -> Item | None:
        """The item, locked until the transaction ends (SQLite's write transactions lock it all)."""
        row = self._connection.execute(select(*_ITEM).where(items.c.id == item_id).with_for_update()).first()
        return _item_from_row(row) if row else None

    def get_many(self, item_ids: Iterable[int]) -> dict[int, Item]:
        rows = self._connection.execute(select(*_ITEM).where(items.c.id.in_(set(item_ids))))
        return {row.id: _item_from_row(row) for row in rows}

    def list_page(self, query: ItemQuery, after_id: int, limit: int) -> list[Item]:
        return self._page(_filter_values(query), after_id, limit)

    def first_page(self, query: ItemQuery, limit: int) -> tuple[list[Item], int]:
        """The first `limit` matches, and how many match in all."""
        values = _filter_values(query)
        shape = _shape(values)
        if _SCANNING_FILTERS.isdisjoint(shape):
            found = self._page(values, 0, limit)
            # A page that holds every match needs no count; an index walk by id gives the
            # page of any other query without touching the rest, so count apart.
            return found, len(found) if len(found) < limit else self._count(values)
        rows = self._connection.execute(
            _counted_first_page_statement(shape), {**_parameters(values), "limit": limit}
        ).all()
        return [_item_from_row(row[:-1]) for row in rows], rows[0][-1] if rows else 0

    def count(self, query: ItemQuery) -> int:
        return self._count(_filter_values(query))

    def _page(self, values: dict[str, Any], after_id: int, limit: int) -> list[Item]:
        rows = self._connection.execute(
            _page_statement(_shape(values)), {**_parameters(values), "after_id": after_id, "limit": limit}
        )
        return [_item_from_row(row) for row in rows]

    def _count(self, values: dict[str, Any]) -> int:
        return int(self._connection.execute(_count_statement(_shape(values)), _parameters(values)).scalar_one())

    def replace_fields(self, item_id: int, expected_version: int, fields: ItemFields) -> Item | None:
        """Writes `fields` if the item is still at `expected_version`; None otherwise."""
        statement = (
            update(items)
            .where(items.c.id == item_id, items.c.version == expected_version)
            .values(**_row_values(fields), update_time=_utcnow(), version=items.c.version + 1)
            .returning(*_ITEM)
        )
        try:
            with self._connection.begin_nested():
                row = self._connection.execute(statement).first()
        except IntegrityError as error:
            if _is_unique_violation(error):
                raise AlreadyExists(f"an item with sku {fields.sku!r} already exists") from None
            raise
        return _item_from_row(row) if row else None

    def delete(self, item_id: int, expected_version: int | None) -> Item | None:
        """Deletes the item (if still at `expected_version`, when given); returns what it was."""
        statement = delete(items).where(items.c.id == item_id)
        if expected_version is not None:
            statement = statement.where(items.c.version == expected_version)
        row = self._connection.execute(statement.returning(*_ITEM)).first()
        return _item_from_row(row) if row else None

    def add_to_quantity(self, item_id: int, delta: int, ceiling: int) -> Item | None:
        """Adds `delta` in one statement; None if the item is missing or the result leaves [0, ceiling]."""
        row = self._connection.execute(_ADD_TO_QUANTITY, _quantity_change(item_id, delta, ceiling)).first()
        return _item_from_row(row) if row else None

    def set_quantity(self, item_id: int, quantity: int) -> Item | None:
        statement = (
            update(items)
            .where(items.c.id == item_id)
            .values(quantity=quantity, update_time=_utcnow(), version=items.c.version + 1)
            .returning(*_ITEM)
        )
        row = self._connection.execute(statement).first()
        return _item_from_row(row) if row else None


def _movement_from_row(row: Any) -> StockMovement:
    return StockMovement(
        id=row.id,
        item_id=row.item_id,
        sku=row.sku,
        delta=row.delta,
        quantity_after=row.quantity_after,
        reason=MovementReason(row.reason),
        low_stock_change=LowStockChange(row.low_stock_change),
        low_stock_threshold=row.low_stock_threshold,
        customer_id=row.customer_id,
        category=row.category,
        note=row.note,
        principal=row.principal,
        request_id=row.request_id,
        create_time=row.create_time,
    )


class SqlStockMovementRepository:
    """The stock ledger: written in the same transaction as every change of stock."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.low_stock_events_added = False

    def add(self, movement: StockMovement) -> None:
        is_event = movement.low_stock_change != LowStockChange.NONE
        if is_event:
            _lock_id_order(self._connection, LOW_STOCK_EVENT_IDS_LOCK)
        self._connection.execute(
            _ADD_MOVEMENT,
            {
                "item_id": movement.item_id,
                "sku": movement.sku,
                "delta": movement.delta,
                "quantity_after": movement.quantity_after,
                "reason": movement.reason.value,
                "low_stock_change": int(movement.low_stock_change),
                "low_stock_threshold": movement.low_stock_threshold,
                "customer_id": movement.customer_id,
                "category": movement.category,
                "note": movement.note,
                "principal": movement.principal,
                "request_id": movement.request_id,
                "create_time": _utcnow(),
            },
        )
        if is_event and not self.low_stock_events_added:
            self.low_stock_events_added = True
            if self._connection.dialect.name == "postgresql":
                # Delivered to every listening replica when (and only if) this transaction commits.
                self._connection.execute(select(func.pg_notify(LOW_STOCK_CHANNEL, "")))

    def list_page(self, item_id: int, before_id: int | None, limit: int) -> list[StockMovement]:
        """Newest first; `before_id` continues after a previous page."""
        statement = select(stock_movements).where(stock_movements.c.item_id == item_id)
        if before_id is not None:
            statement = statement.where(stock_movements.c.id < before_id)
        statement = statement.order_by(stock_movements.c.id.desc()).limit(limit)
        return [_movement_from_row(row) for row in self._connection.execute(statement)]

    def low_stock_events(self, after_id: int, customer_id: str, category: str, limit: int) -> list[StockMovement]:
        """Movements that changed an item's low-stock state, oldest first, after `after_id`."""
        c = stock_movements.c
        statement = select(stock_movements).where(c.low_stock_change != int(LowStockChange.NONE), c.id > after_id)
        if customer_id:
            statement = statement.where(c.customer_id == customer_id)
        if category:
            statement = statement.where(c.category == category)
        statement = statement.order_by(c.id).limit(limit)
        return [_movement_from_row(row) for row in self._connection.execute(statement)]

    def latest_low_stock_event_id(self) -> int:
        # Only low-stock events take their ids in commit order; an ordinary movement may
        # commit with a higher id before an event is committed, and starting past it
        # would lose that event for good.
        c = stock_movements.c
        statement = select(func.coalesce(func.max(c.id), 0)).where(c.low_stock_change != int(LowStockChange.NONE))
        return int(self._connection.execute(statement).scalar_one())


def _item_to_json(item: Item) -> str:
    values = {name: getattr(item, name) for name in MUTABLE_FIELDS}
    values.update(
        price=[item.price.currency_code, item.price.nanos],
        cost=[item.cost.currency_code, item.cost.nanos] if item.cost else None,
        id=item.id,
        version=item.version,
        create_time=item.create_time.isoformat() if item.create_time else None,
        update_time=item.update_time.isoformat() if item.update_time else None,
    )
    return json.dumps(values)


def _item_from_json(text: str) -> Item:
    values = json.loads(text)
    if isinstance(values, list):
        # Written by PostgreSQL itself (see SqlWritesAtOnce): the row's ITEM_COLUMNS in order,
        # its times as ISO 8601 without a zone (they are stored in UTC).
        row = dict(zip(ITEM_COLUMNS, values, strict=True))
        for name in ("create_time", "update_time"):
            row[name] = datetime.fromisoformat(row[name]).replace(tzinfo=UTC)
        return _item_from_row(tuple(row[name] for name in ITEM_COLUMNS))
    values["price"] = Money(*values["price"])
    values["cost"] = Money(*values["cost"]) if values["cost"] else None
    for name in ("create_time", "update_time"):
        values[name] = datetime.fromisoformat(values[name]) if values[name] else None
    return Item(**values)


class SqlRequestIdRepository:
    """Idempotency keys. A key is claimed in the transaction of the change it guards, so a
    concurrent request with the same key waits for that transaction, then sees its result."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def claim(self, request_id: str, method: str, fingerprint: str, ttl_s: float) -> StoredRequest | None:
        """Claims `request_id`; returns what it already stands for, or None when it was free."""
        now = _utcnow()
        expired = now - timedelta(seconds=ttl_s)
        self._connection.execute(
            delete(request_ids).where(request_ids.c.request_id == request_id, request_ids.c.create_time < expired)
        )
        try:
            with self._connection.begin_nested():
                self._connection.execute(
                    insert(request_ids).values(
                        request_id=request_id,
                        method=method,
                        fingerprint=fingerprint,
                        response=None,
                        create_time=now,
                    )
                )
            return None
        except IntegrityError as error:
            if not _is_unique_violation(error):
                raise
        row = self._connection.execute(select(request_ids).where(request_ids.c.request_id == request_id)).one()
        return StoredRequest(row.method, row.fingerprint, _item_from_json(row.response) if row.response else None)

    def complete(self, request_id: str, result: Item) -> None:
        self._connection.execute(
            update(request_ids).where(request_ids.c.request_id == request_id).values(response=_item_to_json(result))
        )

    def purge_expired(self, ttl_s: float) -> int:
        cutoff = _utcnow() - timedelta(seconds=ttl_s)
        return self._connection.execute(delete(request_ids).where(request_ids.c.create_time < cutoff)).rowcount


def _ledger_insert(changed: Any, delta: ColumnElement[Any], reason: ColumnElement[Any]) -> Any:
    """The ledger row of each row of `changed` (which has ITEM_COLUMNS and low_stock_change),
    as a CTE. A low-stock event first takes LOW_STOCK_EVENT_IDS_LOCK, so that event ids
    increase in commit order: the row's id (its sequence default) is computed only after
    its WHERE held, and the EXISTS holds only once the lock is taken. A row that crosses no
    threshold takes no lock."""
    event_ids_locked = (
        select(func.pg_advisory_xact_lock(LOW_STOCK_EVENT_IDS_LOCK))
        .select_from(changed)
        .where(changed.c.low_stock_change != int(LowStockChange.NONE))
        .cte("event_ids_locked")
    )
    columns = (
        "item_id",
        "sku",
        "delta",
        "quantity_after",
        "reason",
        "low_stock_change",
        "low_stock_threshold",
        "customer_id",
        "category",
        "note",
        "principal",
        "request_id",
        "create_time",
    )
    rows = select(
        changed.c.id,
        changed.c.sku,
        delta,
        changed.c.quantity,
        reason,
        changed.c.low_stock_change,
        changed.c.low_stock_threshold,
        changed.c.customer_id,
        changed.c.category,
        bindparam("note", type_=String()),
        bindparam("principal", type_=String()),
        bindparam("request_id", type_=String()),
        changed.c.update_time,
    ).where(or_(changed.c.low_stock_change == int(LowStockChange.NONE), exists(event_ids_locked.select())))
    return (
        insert(stock_movements).from_select(columns, rows).returning(stock_movements.c.low_stock_change).cte("recorded")
    )


def _write_at_once(changed: Any, recorded: Any, *, with_request_id: bool) -> Select[Any]:
    """The one statement of a write: the changed row, its ledger row, a NOTIFY to every
    replica when it is a low-stock event, and, `with_request_id`, the request_id's record
    with its result (a request_id used before fails the statement: nothing is changed)."""
    notified = (
        select(func.pg_notify(LOW_STOCK_CHANNEL, ""))
        .select_from(recorded)
        .where(recorded.c.low_stock_change != int(LowStockChange.NONE))
        .cte("notified")
    )
    statement = select(
        *(changed.c[name] for name in ITEM_COLUMNS),
        select(func.count()).select_from(notified).scalar_subquery().label("low_stock_events"),
    )
    if with_request_id:
        response = func.json_build_array(*(changed.c[name] for name in ITEM_COLUMNS)).cast(Text)
        claimed = (
            insert(request_ids)
            .from_select(
                ("request_id", "method", "fingerprint", "response", "create_time"),
                select(
                    bindparam("request_id", type_=String()),
                    bindparam("method", type_=String()),
                    bindparam("fingerprint", type_=String()),
                    response,
                    changed.c.update_time,
                ),
            )
            .cte("claimed")
        )
        statement = statement.add_cte(claimed)
    return statement


def _low_stock_change(is_low: ColumnElement[bool], was_low: ColumnElement[bool]) -> ColumnElement[int]:
    return case(
        (and_(is_low, not_(was_low)), int(LowStockChange.BECAME_LOW)),
        (and_(was_low, not_(is_low)), int(LowStockChange.RECOVERED)),
        else_=int(LowStockChange.NONE),
    )


@functools.lru_cache(maxsize=2)
def _add_to_quantity_at_once(with_request_id: bool) -> Select[Any]:
    delta = bindparam("delta")
    was_low = and_(items.c.is_active, items.c.quantity - delta <= items.c.low_stock_threshold)
    changed = _ADD_TO_QUANTITY_UNRETURNED.returning(
        *_ITEM, _low_stock_change(items.c.is_low_stock, was_low).label("low_stock_change")
    ).cte("changed")
    recorded = _ledger_insert(changed, delta, bindparam("reason", type_=String()))
    return _write_at_once(changed, recorded, with_request_id=with_request_id)


_CREATED_COLUMNS = (
    *_row_values(ItemFields(sku="", name="", price=Money("", 0))),
    "create_time",
    "update_time",
    "version",
)


@functools.lru_cache(maxsize=2)
def _add_item_at_once(with_request_id: bool) -> Select[Any]:
    # Taking ITEM_IDS_LOCK first makes item ids increase in commit order (see _lock_id_order):
    # the inserted row is made from the lock's one row, so its id comes after the lock.
    item_ids_locked = select(func.pg_advisory_xact_lock(ITEM_IDS_LOCK).label("locked")).cte("item_ids_locked")
    values = [bindparam(name, type_=items.c[name].type) for name in _CREATED_COLUMNS[:-1]]
    changed = (
        insert(items)
        .from_select(
            _CREATED_COLUMNS,
            select(*values, literal(1)).select_from(item_ids_locked),
        )
        .returning(*_ITEM, _low_stock_change(items.c.is_low_stock, false_()).label("low_stock_change"))
        .cte("changed")
    )
    # A new item has a ledger row when it holds stock or starts low (see movement_between).
    moved = (
        select(changed)
        .where(or_(changed.c.quantity != 0, changed.c.low_stock_change != int(LowStockChange.NONE)))
        .cte("moved")
    )
    recorded = _ledger_insert(moved, moved.c.quantity, literal(MovementReason.ITEM_CREATED.value, String()))
    return _write_at_once(changed, recorded, with_request_id=with_request_id)


class SqlWritesAtOnce:
    """Writes that PostgreSQL makes in one statement, so in one round trip: on a connection
    in autocommit, the statement is its own transaction. Each answers None when it did not
    write (a missing item, a bound crossed, a request_id used before, a clash): the caller
    then goes the way of many statements, which tells those cases apart."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.low_stock_events_added = False

    def _run(self, statement: Select[Any], parameters: dict[str, Any]) -> Item | None:
        try:
            row = self._connection.execute(statement, parameters).first()
        except DBAPIError as error:
            if isinstance(error, IntegrityError) and _is_unique_violation(error):
                return None  # the statement failed as a whole: nothing was written
            if error.connection_invalidated:
                # Lost after the statement was sent: it may have committed.
                raise Unavailable(
                    "the database connection was lost while writing: the change may or may not "
                    "have been made; read it again, or retry with the same request_id"
                ) from error
            raise
        if row is None:
            return None
        if row[-1]:
            self.low_stock_events_added = True
        return _item_from_row(row[:-1])

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
    ) -> Item | None:
        """What SqlItemRepository.add_to_quantity does, with its ledger row and request_id record."""
        return self._run(
            _add_to_quantity_at_once(bool(request_id)),
            {
                **_quantity_change(item_id, delta, ceiling),
                "reason": reason.value,
                "note": note,
                "principal": principal,
                "request_id": request_id,
                "method": method,
                "fingerprint": fingerprint,
            },
        )

    def add_item(
        self, fields: ItemFields, *, principal: str, request_id: str, method: str, fingerprint: str
    ) -> Item | None:
        """What SqlItemRepository.add does, with its ledger row and request_id record."""
        now = _utcnow()
        return self._run(
            _add_item_at_once(bool(request_id)),
            {
                **_row_values(fields),
                "create_time": now,
                "update_time": now,
                "note": "",
                "principal": principal,
                "request_id": request_id,
                "method": method,
                "fingerprint": fingerprint,
            },
        )


_WRITE_OPTION = "inventory_write_transaction"


def _unavailable_for(error: BaseException | None) -> Unavailable | None:
    """What a database error that nothing was committed through means to a client: worth a
    retry (None: an error of ours, or of the request)."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        # The pool drops the broken connection; the next call gets a fresh one.
        return Unavailable("the database connection was lost; try again")
    if isinstance(error, OperationalError) and "database is locked" in str(error.orig):
        # SQLite's busy timeout ran out behind another writer.
        return Unavailable("the database is busy; try again")
    return None


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
            raise Unavailable("the database cannot be reached; try again") from error
        except PoolTimeout as error:
            raise Unavailable("every database connection of this replica is in use; try again") from error
        self._autocommit_driver = None
        if self._for_write and not self._at_once:
            self._connection.execution_options(**{_WRITE_OPTION: True})
        elif self._engine.dialect.name == "postgresql":
            # Straight on the driver: SQLAlchemy's isolation_level option would cost two SETs,
            # so two round trips, to switch to autocommit and back.
            self._autocommit_driver = self._connection.connection.driver_connection
            self._autocommit_driver.autocommit = True
        try:
            self._transaction = self._connection.begin()  # on SQLite a writer waits for the lock here
        except DBAPIError as error:
            self._release()
            unavailable = _unavailable_for(error)
            if unavailable is None:
                raise
            raise unavailable from error
        self.items = SqlItemRepository(self._connection)
        self.movements = SqlStockMovementRepository(self._connection)
        self.request_ids = SqlRequestIdRepository(self._connection)
        if self._at_once:
            self.at_once = SqlWritesAtOnce(self._connection)
        return self

    def __exit__(self, _type: object, error: BaseException | None, _traceback: object) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self._release()
        unavailable = _unavailable_for(error)
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
            raise Unavailable(
                "the database connection was lost while committing: the change may or may not "
                "have been made; read it again, or retry with the same request_id"
            ) from error
        events_added = self.movements.low_stock_events_added or (self.at_once and self.at_once.low_stock_events_added)
        if events_added and self._on_low_stock_events:
            self._on_low_stock_events()


def _reason(error: BaseException) -> str:
    """The first line of what went wrong with the database, without the statement or a traceback."""
    cause = getattr(error, "orig", None) or error
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__


class ListenerSilent(ConnectionError):
    """The listener's own probe did not come back: its notifications cannot be trusted."""


class PostgresChangeListener:
    """LISTENs on PostgreSQL for what any replica commits: low-stock events (`on_low_stock`)
    and changed items (`on_item_changed(id)`, or `on_all_items_changed()` after a TRUNCATE).

    It proves every few seconds that notifications still reach it, by NOTIFYing a probe
    channel and waiting for the echo: a connection cut without a word (a dropped NAT entry,
    a partition) or a pooler that swallows LISTEN shows up as a missing echo. `on_listening`
    runs once the first echo is back, `on_lost` when the connection or the echo is lost;
    then it reconnects by itself."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_low_stock: Callable[[], None],
        on_item_changed: Callable[[int], None],
        on_all_items_changed: Callable[[], None],
        on_listening: Callable[[], None],
        on_lost: Callable[[], None],
        probe_interval_s: float = 2.0,
        probe_deadline_s: float = 6.0,
    ) -> None:
        self._engine = engine
        self._on_low_stock = on_low_stock
        self._on_item_changed = on_item_changed
        self._on_all_items_changed = on_all_items_changed
        self._on_listening = on_listening
        self._on_lost = on_lost
        self._probe_interval_s = probe_interval_s
        self._probe_deadline_s = probe_deadline_s
        self._stopping = threading.Event()
        self._outage_logged = False
        self._thread = threading.Thread(target=self._run, name="change-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        database_errors = (DBAPIError, ListenerSilent, OSError, self._engine.dialect.loaded_dbapi.Error)
        while not self._stopping.is_set():
            try:
                self._listen()
            except database_errors as error:
                # An outage is one WARNING with its reason; the attempts that fail while it
                # lasts are DEBUG, and listening again is INFO.
                if self._outage_logged:
                    log.debug("change listener still cannot listen (%s): retrying", _reason(error))
                else:
                    self._outage_logged = True
                    log.warning("change listener lost its connection (%s): reconnecting", _reason(error))
            except Exception:
                log.exception("change listener failed: restarting it")
            self._on_low_stock()  # a watcher re-reads the ledger, so nothing missed meanwhile is lost
            self._stopping.wait(1)

    def _listening_again(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.info("change listener listens again")
        self._on_listening()

    def _listen(self) -> None:
        connection = self._engine.raw_connection()
        dbapi_connection = connection.driver_connection
        connection.detach()  # a connection of its own while it listens: the pool's are for calls
        listening = False
        try:
            dbapi_connection.autocommit = True
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"LISTEN {LOW_STOCK_CHANNEL}; LISTEN {ITEM_CHANGES_CHANNEL}; LISTEN {PROBE_CHANNEL}")
            last_echo = next_probe = time.monotonic()
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_probe:
                    with dbapi_connection.cursor() as cursor:
                        cursor.execute(f"NOTIFY {PROBE_CHANNEL}")
                    next_probe = now + self._probe_interval_s
                if now - last_echo > self._probe_deadline_s:
                    raise ListenerSilent(f"no echo of the listener's probe for {self._probe_deadline_s:g} s")
                if select_module.select([dbapi_connection], [], [], 0.5) != ([], [], []):
                    dbapi_connection.poll()
                notifications, dbapi_connection.notifies[:] = list(dbapi_connection.notifies), []
                for notification in notifications:
                    if notification.channel == PROBE_CHANNEL:
                        last_echo = time.monotonic()
                        if not listening:
                            listening = True
                            self._listening_again()
                    elif notification.channel == ITEM_CHANGES_CHANNEL:
                        if notification.payload == ALL_ITEMS:
                            self._on_all_items_changed()
                        else:
                            self._on_item_changed(int(notification.payload))
                if any(notification.channel == LOW_STOCK_CHANNEL for notification in notifications):
                    self._on_low_stock()
        finally:
            self._on_lost()
            # Detached, so closing is ours; not through connection.close(), whose rollback
            # would fail on a lost connection and be logged as an ERROR with a traceback.
            try:
                dbapi_connection.close()
            finally:
                connection.invalidate()


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# How long a SQLite writer waits behind another before its call answers UNAVAILABLE.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def prepare_engine(engine: Engine) -> Engine:
    """Database-specific settings every connection needs; call once on a new engine."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the "begin" hook below issues BEGIN itself
            # SQLite's own lower() folds A-Z only; searches fold the text with Python's.
            dbapi_connection.create_function("lower", 1, _lower, deterministic=True)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # Writers take the write lock up front: a read lock upgraded later fails at once
            # with "database is locked" instead of waiting its turn.
            immediate = connection.get_execution_options().get(_WRITE_OPTION)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
