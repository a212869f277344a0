"""Domain objects to and from rows: the values an item is written with, an Item or a
StockMovement from a row, and an Item as the JSON a request_id's record keeps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from inventory_svc.domain import MUTABLE_FIELDS, Item, ItemFields, Money
from inventory_svc.ports import StoredResult
from inventory_svc.reservation_rules import Reservation, ReservationLine, ReservationState
from inventory_svc.stock import LowStockChange, MovementReason, StockMovement
from inventory_svc.storage.tables import ITEM_COLUMNS


def row_values(fields: ItemFields) -> dict[str, Any]:
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


def item_from_row(row: Sequence[Any]) -> Item:
    """An Item from a row of tables.ITEM_COLUMNS, in that order."""
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
        reserved_quantity,
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
        reserved_quantity=reserved_quantity,
    )


def movement_from_row(row: Any) -> StockMovement:
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
        reserved_delta=row.reserved_delta,
        reserved_after=row.reserved_after,
        reservation_id=row.reservation_id or 0,
    )


def reservation_from_rows(row: Any, lines: Sequence[Any]) -> Reservation:
    """A Reservation from its row of `reservations` and its rows of `reservation_lines`."""
    return Reservation(
        id=row.id,
        state=ReservationState(row.state),
        lines=tuple(ReservationLine(line.item_id, line.quantity) for line in sorted(lines, key=_position)),
        reference=row.reference,
        principal=row.principal,
        create_time=row.create_time,
        expire_time=row.expire_time,
        update_time=row.update_time,
    )


def _position(line: Any) -> int:
    return int(line.position)


def item_to_json(item: Item) -> str:
    values = {name: getattr(item, name) for name in MUTABLE_FIELDS}
    values.update(
        price=[item.price.currency_code, item.price.nanos],
        cost=[item.cost.currency_code, item.cost.nanos] if item.cost else None,
        id=item.id,
        version=item.version,
        reserved_quantity=item.reserved_quantity,
        create_time=item.create_time.isoformat() if item.create_time else None,
        update_time=item.update_time.isoformat() if item.update_time else None,
    )
    return json.dumps(values)


def item_from_json(text: str) -> Item:
    return _item_from_values(json.loads(text))


def _item_from_values(values: Any) -> Item:
    if isinstance(values, list):
        # Written by PostgreSQL itself (see writes_at_once): the row's ITEM_COLUMNS in order,
        # its times as ISO 8601 without a zone (they are stored in UTC). Written before
        # reservations existed, it lacks the last column, reserved_quantity: none were held.
        if len(values) == len(ITEM_COLUMNS) - 1:
            values = [*values, 0]
        row = dict(zip(ITEM_COLUMNS, values, strict=True))
        for name in ("create_time", "update_time"):
            row[name] = datetime.fromisoformat(row[name]).replace(tzinfo=UTC)
        return item_from_row(tuple(row[name] for name in ITEM_COLUMNS))
    values["price"] = Money(*values["price"])
    values["cost"] = Money(*values["cost"]) if values["cost"] else None
    for name in ("create_time", "update_time"):
        values[name] = datetime.fromisoformat(values[name]) if values[name] else None
    return Item(**values)


def _time(value: datetime) -> str:
    return value.isoformat()


def _utc(text: str) -> datetime:
    # Written by Python with its zone, or by PostgreSQL in UTC without one.
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def reservation_to_values(reservation: Reservation) -> dict[str, Any]:
    return {
        "reservation": [
            reservation.id,
            reservation.state.value,
            reservation.reference,
            reservation.principal,
            _time(reservation.create_time),
            _time(reservation.expire_time),
            _time(reservation.update_time),
        ],
        "lines": [[line.item_id, line.quantity] for line in reservation.lines],
    }


def _reservation_from_values(values: dict[str, Any]) -> Reservation:
    reservation_id, state, reference, principal, create_time, expire_time, update_time = values["reservation"]
    return Reservation(
        id=reservation_id,
        state=ReservationState(state),
        lines=tuple(ReservationLine(item_id, quantity) for item_id, quantity in values["lines"]),
        reference=reference,
        principal=principal,
        create_time=_utc(create_time),
        expire_time=_utc(expire_time),
        update_time=_utc(update_time),
    )


def result_to_json(result: StoredResult) -> str:
    """The first result of a request_id, as its record keeps it: an Item (the form of
    item_to_json), a Reservation, or the items of a batch."""
    if isinstance(result, Item):
        return item_to_json(result)
    if isinstance(result, Reservation):
        return json.dumps(reservation_to_values(result))
    return json.dumps({"items": [json.loads(item_to_json(item)) for item in result]})


def result_from_json(text: str) -> StoredResult:
    values = json.loads(text)
    if isinstance(values, dict) and "reservation" in values:
        return _reservation_from_values(values)
    if isinstance(values, dict) and "items" in values:
        return tuple(_item_from_values(item) for item in values["items"])
    return _item_from_values(values)
