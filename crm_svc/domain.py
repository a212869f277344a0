"""The customer's view of an item, and which items a customer may see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inventory_svc.domain import Item, Money


@dataclass(frozen=True, slots=True)
class CustomerItem:
    """What a customer sees of an item: no cost, thresholds, reorder ceiling, owner or etag."""

    id: int
    sku: str
    name: str
    description: str
    category: str
    brand: str
    price: Money
    quantity: int
    weight_kg: float | None
    dimensions: str
    update_time: datetime | None


@dataclass(frozen=True, slots=True)
class CustomerPage:
    items: list[CustomerItem]
    next_page_token: str
    total_size: int


def visible_to(item: Item, customer_id: str) -> bool:
    """A customer sees their own active items, and nothing else."""
    return item.customer_id == customer_id and item.is_active


def customer_view(item: Item) -> CustomerItem:
    return CustomerItem(
        id=item.id, sku=item.sku, name=item.name, description=item.description,
        category=item.category, brand=item.brand, price=item.price, quantity=item.quantity,
        weight_kg=item.weight_kg, dimensions=item.dimensions, update_time=item.update_time,
    )
