"""Writes that PostgreSQL makes in one statement (data-modifying CTEs): the changed row, its
ledger row, a NOTIFY for a low-stock event and the request_id's record, in one round trip."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy import false as false_
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.base import Executable

from inventory_svc.domain import Item, ItemFields, Money
from inventory_svc.reservation_rules import ENDINGS, Reservation, ReservationLine, ReservationState
from inventory_svc.stock import LowStockChange, MovementReason
from inventory_svc.storage import queries, reservation_writes
from inventory_svc.storage.errors import is_unique_violation, lost_while_writing, sqlstate
from inventory_svc.storage.queries import utcnow
from inventory_svc.storage.rows import item_from_row, reservation_to_values, row_values
from inventory_svc.storage.tables import (
    ITEM,
    ITEM_COLUMNS,
    ITEM_IDS_LOCK,
    LOW_STOCK_CHANNEL,
    LOW_STOCK_EVENT_IDS_LOCK,
    items,
    request_ids,
    stock_movements,
)


def _ledger_insert(
    changed: CTE, delta: ColumnElement[Any], reason: ColumnElement[Any], reserved_delta: ColumnElement[Any]
) -> CTE:
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
        "reserved_delta",
        "reserved_after",
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
        reserved_delta,
        changed.c.reserved_quantity,
    ).where(or_(changed.c.low_stock_change == int(LowStockChange.NONE), exists(event_ids_locked.select())))
    return (
        insert(stock_movements).from_select(columns, rows).returning(stock_movements.c.low_stock_change).cte("recorded")
    )


def _write_at_once(changed: CTE, recorded: CTE, *, with_request_id: bool) -> Select[Any]:
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
    delta: ColumnElement[int] = bindparam("delta")
    reserved_delta: ColumnElement[int] = bindparam("reserved_delta")
    # RETURNING sees the row after the change: the state before is the change undone.
    available_before = (items.c.quantity - delta) - (items.c.reserved_quantity - reserved_delta)
    was_low = and_(items.c.is_active, available_before <= items.c.low_stock_threshold)
    changed = queries.ADD_TO_QUANTITY_UNRETURNED.returning(
        *ITEM, _low_stock_change(items.c.is_low_stock, was_low).label("low_stock_change")
    ).cte("changed")
    recorded = _ledger_insert(changed, delta, bindparam("reason", type_=String()), reserved_delta)
    return _write_at_once(changed, recorded, with_request_id=with_request_id)


_CREATED_COLUMNS = (
    *row_values(ItemFields(sku="", name="", price=Money("", 0))),
    "create_time",
    "update_time",
    "version",
)


@functools.lru_cache(maxsize=2)
def _add_item_at_once(with_request_id: bool) -> Select[Any]:
    # Taking ITEM_IDS_LOCK first makes item ids increase in commit order (see tables.lock_id_order):
    # the inserted row is made from the lock's one row, so its id comes after the lock.
    item_ids_locked = select(func.pg_advisory_xact_lock(ITEM_IDS_LOCK).label("locked")).cte("item_ids_locked")
    values = [bindparam(name, type_=items.c[name].type) for name in _CREATED_COLUMNS[:-1]]
    changed = (
        insert(items)
        .from_select(
            _CREATED_COLUMNS,
            select(*values, literal(1)).select_from(item_ids_locked),
        )
        .returning(*ITEM, _low_stock_change(items.c.is_low_stock, false_()).label("low_stock_change"))
        .cte("changed")
    )
    # A new item has a ledger row when it holds stock or starts low (see movement_between).
    moved = (
        select(changed)
        .where(or_(changed.c.quantity != 0, changed.c.low_stock_change != int(LowStockChange.NONE)))
        .cte("moved")
    )
    recorded = _ledger_insert(moved, moved.c.quantity, literal(MovementReason.ITEM_CREATED.value, String()), literal(0))
    return _write_at_once(changed, recorded, with_request_id=with_request_id)


# Errors that undo a whole statement and that the way of many statements does not meet: a
# deadlock (which the id-ordered locks should never let happen) and the division by zero of
# reservation_writes' check that every locked item was changed.
_WROTE_NOTHING = frozenset({"40P01", "22012"})


class SqlWritesAtOnce:
    """On a connection in autocommit, each statement is its own transaction. Each write
    answers None when it did not write (a missing item, a bound crossed, a request_id used
    before, a clash): the caller then goes the way of many statements, which tells those
    cases apart."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.low_stock_events_added = False

    def _run(self, statement: Select[Any], parameters: dict[str, Any]) -> Item | None:
        row = self._run_row(statement, parameters)
        return item_from_row(row[:-1]) if row is not None else None

    def _run_row(self, statement: Executable, parameters: dict[str, Any]) -> Row[Any] | None:
        """The statement's row, its last column the number of low-stock events it notified;
        None when it wrote nothing."""
        try:
            row = self._connection.execute(statement, parameters).first()
        except DBAPIError as error:
            if isinstance(error, IntegrityError) and is_unique_violation(error):
                return None  # the statement failed as a whole: nothing was written
            if sqlstate(error) in _WROTE_NOTHING:
                return None
            if error.connection_invalidated:
                raise lost_while_writing("writing") from error  # after the statement was sent
            raise
        if row is None:
            return None
        if row[-1]:
            self.low_stock_events_added = True
        return row

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
                **queries.quantity_change(item_id, delta, ceiling),
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
        now = utcnow()
        return self._run(
            _add_item_at_once(bool(request_id)),
            {
                **row_values(fields),
                "create_time": now,
                "update_time": now,
                "note": "",
                "principal": principal,
                "request_id": request_id,
                "method": method,
                "fingerprint": fingerprint,
            },
        )

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
    ) -> Reservation | None:
        """What ReservationService.reserve does, in one statement: every line held or none."""
        reservation = Reservation.made(0, lines, reference, principal, now, expire_time)
        row = self._run_row(
            reservation_writes.RESERVE,
            {
                "item_ids": [line.item_id for line in lines],
                "quantities": [line.quantity for line in lines],
                "line_count": len(lines),
                "reference": reference,
                "principal": principal,
                "now": now,
                "expire_time": expire_time,
                "request_id": request_id,
                "method": method,
                "fingerprint": fingerprint,
                # The request_id's first result; the statement puts in the reservation's id.
                "response": json.dumps(reservation_to_values(reservation)) if request_id else "null",
            },
        )
        return replace(reservation, id=row.id) if row is not None else None

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
    ) -> Reservation | None:
        """Confirms or releases an active reservation not yet past its time, in one statement."""
        ending = ENDINGS[state]
        row = self._run_row(
            reservation_writes.END_RESERVATION,
            {
                "reservation_id": reservation_id,
                "state": state.value,
                "per_unit_delta": ending.quantity_per_unit,
                "reason": ending.reason.value,
                "now": now,
                "principal": principal,
                "request_id": request_id,
                "method": method,
                "fingerprint": fingerprint,
            },
        )
        if row is None:
            return None
        return Reservation(
            id=row.id,
            state=state,
            lines=tuple(ReservationLine(item_id, quantity) for item_id, quantity in json.loads(row.lines)),
            reference=row.reference,
            principal=row.principal,
            create_time=row.create_time,
            expire_time=row.expire_time,
            update_time=now,
        )
