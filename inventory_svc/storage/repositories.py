"""The repositories of one transaction: items, the stock ledger and request_ids (idempotency
keys). Missing rows come back as None; the rules live in the service."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from inventory_svc.domain import Item, ItemFields, ItemQuery, SkuTaken
from inventory_svc.ports import StoredRequest, StoredResult
from inventory_svc.stock import LowStockChange, StockMovement
from inventory_svc.storage import queries
from inventory_svc.storage.errors import is_unique_violation
from inventory_svc.storage.queries import utcnow
from inventory_svc.storage.rows import (
    item_from_row,
    movement_from_row,
    result_from_json,
    result_to_json,
    row_values,
)
from inventory_svc.storage.tables import (
    ITEM,
    ITEM_IDS_LOCK,
    LOW_STOCK_CHANNEL,
    LOW_STOCK_EVENT_IDS_LOCK,
    items,
    lock_id_order,
    request_ids,
    stock_movements,
)


def _sku_taken(fields: ItemFields) -> SkuTaken:
    return SkuTaken(fields.sku)


class SqlItemRepository:
    """Items in one transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def lock_new_ids(self) -> None:
        """Takes, until the transaction ends, the lock that keeps new items' ids in commit
        order (add() takes it too; taking it twice is free)."""
        lock_id_order(self._connection, ITEM_IDS_LOCK)

    def add(self, fields: ItemFields) -> Item:
        now = utcnow()
        statement = (
            insert(items).values(**row_values(fields), create_time=now, update_time=now, version=1).returning(*ITEM)
        )
        lock_id_order(self._connection, ITEM_IDS_LOCK)
        try:
            # A savepoint keeps the transaction usable after a clash (PostgreSQL aborts it otherwise).
            with self._connection.begin_nested():
                row = self._connection.execute(statement).one()
        except IntegrityError as error:
            if is_unique_violation(error):
                raise _sku_taken(fields) from None
            raise
        return item_from_row(row)

    def get(self, item_id: int) -> Item | None:
        row = self._connection.execute(queries.GET_ITEM, {"item_id": item_id}).first()
        return item_from_row(row) if row else None

    def get_for_update(self, item_id: int) -> Item | None:
        """The item, locked until the transaction ends (SQLite's write transactions lock it all)."""
        row = self._connection.execute(select(*ITEM).where(items.c.id == item_id).with_for_update()).first()
        return item_from_row(row) if row else None

    def lock(self, item_ids: Sequence[int]) -> None:
        """Locks the items until the transaction ends, in the order of their ids (SQLite's
        write transactions lock it all)."""
        statement = select(items.c.id).where(items.c.id.in_(item_ids)).order_by(items.c.id).with_for_update()
        self._connection.execute(statement).all()

    def get_many(self, item_ids: Iterable[int]) -> dict[int, Item]:
        rows = self._connection.execute(select(*ITEM).where(items.c.id.in_(set(item_ids))))
        return {row.id: item_from_row(row) for row in rows}

    def list_page(self, query: ItemQuery, after_id: int, limit: int) -> list[Item]:
        return self._page(queries.filter_values(query), after_id, limit)

    def first_page(self, query: ItemQuery, limit: int) -> tuple[list[Item], int]:
        """The first `limit` matches, and how many match in all."""
        values = queries.filter_values(query)
        shape = queries.shape(values)
        if queries.SCANNING_FILTERS.isdisjoint(shape):
            found = self._page(values, 0, limit)
            # A page that holds every match needs no count; an index walk by id gives the
            # page of any other query without touching the rest, so count apart.
            return found, len(found) if len(found) < limit else self._count(values)
        rows = self._connection.execute(
            queries.counted_first_page_statement(shape), {**queries.parameters(values), "limit": limit}
        ).all()
        return [item_from_row(row[:-1]) for row in rows], rows[0][-1] if rows else 0

    def _page(self, values: dict[str, Any], after_id: int, limit: int) -> list[Item]:
        rows = self._connection.execute(
            queries.page_statement(queries.shape(values)),
            {**queries.parameters(values), "after_id": after_id, "limit": limit},
        )
        return [item_from_row(row) for row in rows]

    def _count(self, values: dict[str, Any]) -> int:
        statement = queries.count_statement(queries.shape(values))
        return int(self._connection.execute(statement, queries.parameters(values)).scalar_one())

    def replace_fields(self, item_id: int, expected_version: int, fields: ItemFields) -> Item | None:
        """Writes `fields` if the item is still at `expected_version`; None otherwise."""
        statement = (
            update(items)
            .where(items.c.id == item_id, items.c.version == expected_version)
            .values(**row_values(fields), update_time=utcnow(), version=items.c.version + 1)
            .returning(*ITEM)
        )
        try:
            with self._connection.begin_nested():
                row = self._connection.execute(statement).first()
        except IntegrityError as error:
            if is_unique_violation(error):
                raise _sku_taken(fields) from None
            raise
        return item_from_row(row) if row else None

    def delete(self, item_id: int, expected_version: int | None) -> Item | None:
        """Deletes the item (if still at `expected_version`, when given, and holding nothing
        reserved); returns what it was."""
        statement = delete(items).where(items.c.id == item_id, items.c.reserved_quantity == 0)
        if expected_version is not None:
            statement = statement.where(items.c.version == expected_version)
        row = self._connection.execute(statement.returning(*ITEM)).first()
        return item_from_row(row) if row else None

    def add_to_quantity(self, item_id: int, delta: int, ceiling: int, reserved_delta: int = 0) -> Item | None:
        """Adds `delta` to the quantity and `reserved_delta` to the reserved units in one
        statement; None if the item is missing, or the available units would go below
        zero, or the quantity past `ceiling`."""
        parameters = queries.quantity_change(item_id, delta, ceiling, reserved_delta)
        row = self._connection.execute(queries.ADD_TO_QUANTITY, parameters).first()
        return item_from_row(row) if row else None

    def set_quantity(self, item_id: int, quantity: int) -> Item | None:
        """None if the item is missing or holds more units reserved than `quantity`."""
        statement = (
            update(items)
            .where(items.c.id == item_id, items.c.reserved_quantity <= quantity)
            .values(quantity=quantity, update_time=utcnow(), version=items.c.version + 1)
            .returning(*ITEM)
        )
        row = self._connection.execute(statement).first()
        return item_from_row(row) if row else None


class SqlStockMovementRepository:
    """The stock ledger: written in the same transaction as every change of stock."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.low_stock_events_added = False

    def add(self, movement: StockMovement) -> None:
        is_event = movement.low_stock_change != LowStockChange.NONE
        if is_event:
            lock_id_order(self._connection, LOW_STOCK_EVENT_IDS_LOCK)
        self._connection.execute(
            queries.ADD_MOVEMENT,
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
                "create_time": utcnow(),
                "reserved_delta": movement.reserved_delta,
                "reserved_after": movement.reserved_after,
                "reservation_id": movement.reservation_id or None,
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
        return [movement_from_row(row) for row in self._connection.execute(statement)]

    def low_stock_events(self, after_id: int, customer_id: str, category: str, limit: int) -> list[StockMovement]:
        """Movements that changed an item's low-stock state, oldest first, after `after_id`."""
        c = stock_movements.c
        statement = select(stock_movements).where(c.low_stock_change != int(LowStockChange.NONE), c.id > after_id)
        if customer_id:
            statement = statement.where(c.customer_id == customer_id)
        if category:
            statement = statement.where(c.category == category)
        statement = statement.order_by(c.id).limit(limit)
        return [movement_from_row(row) for row in self._connection.execute(statement)]

    def latest_low_stock_event_id(self) -> int:
        # Only low-stock events take their ids in commit order; an ordinary movement may
        # commit with a higher id before an event is committed, and starting past it
        # would lose that event for good.
        c = stock_movements.c
        statement = select(func.coalesce(func.max(c.id), 0)).where(c.low_stock_change != int(LowStockChange.NONE))
        return int(self._connection.execute(statement).scalar_one())


class SqlRequestIdRepository:
    """Idempotency keys. A key is claimed in the transaction of the change it guards, so a
    concurrent request with the same key waits for that transaction, then sees its result."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def claim(self, request_id: str, method: str, fingerprint: str, ttl_s: float) -> StoredRequest | None:
        """Claims `request_id`; returns what it already stands for, or None when it was free."""
        now = utcnow()
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
            if not is_unique_violation(error):
                raise
        row = self._connection.execute(select(request_ids).where(request_ids.c.request_id == request_id)).one()
        return StoredRequest(row.method, row.fingerprint, result_from_json(row.response) if row.response else None)

    def complete(self, request_id: str, result: StoredResult) -> None:
        self._connection.execute(
            update(request_ids).where(request_ids.c.request_id == request_id).values(response=result_to_json(result))
        )

    def purge_expired(self, ttl_s: float) -> int:
        cutoff = utcnow() - timedelta(seconds=ttl_s)
        return self._connection.execute(delete(request_ids).where(request_ids.c.create_time < cutoff)).rowcount
