"""Domain objects to and from rows: the values an item is written with, an Item or a
StockMovement from a row, and an Item as the JSON a request_id's record keeps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from inventory_svc.domain import MUTABLE_FIELDS, Item, ItemFields, LowStockChange, Money, MovementReason, StockMovement
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
    )


def item_to_json(item: Item) -> str:
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


def item_from_json(text: str) -> Item:
    values = json.loads(text)
    if isinstance(values, list):
        # Written by PostgreSQL itself (see writes_at_once): the row's ITEM_COLUMNS in order,
        # its times as ISO 8601 without a zone (they are stored in UTC).
        row = dict(zip(ITEM_COLUMNS, values, strict=True))
        for name in ("create_time", "update_time"):
            row[name] = datetime.fromisoformat(row[name]).replace(tzinfo=UTC)
        return item_from_row(tuple(row[name] for name in ITEM_COLUMNS))
    values["price"] = Money(*values["price"])
    values["cost"] = Money(*values["cost"]) if values["cost"] else None
    for name in ("create_time", "update_time"):
        values[name] = datetime.fromisoformat(values[name]) if values[name] else None
    return Item(**values)
