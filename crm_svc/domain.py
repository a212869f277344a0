"""The customer's view of an item, and which items a customer may see."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inventory_svc.domain import Item, Money, check_text
from servicekit.errors import InvalidField, PermissionDenied

MAX_CUSTOMER_ID_LENGTH = 100  # as long as an item's customer_id may be


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


def check_customer_id(customer_id: str) -> None:
    """A customer token's subject names the customer: one that no item could name is refused
    as such, not as a field of a request the customer never wrote."""
    try:
        check_text("customer_id", customer_id, MAX_CUSTOMER_ID_LENGTH, required=True)
    except InvalidField:
        raise PermissionDenied("this token's subject is not a customer id") from None


def visible_to(item: Item, customer_id: str) -> bool:
    """A customer sees their own active items, and nothing else."""
    return item.customer_id == customer_id and item.is_active


def customer_view(item: Item) -> CustomerItem:
    return CustomerItem(
        id=item.id, sku=item.sku, name=item.name, description=item.description,
        category=item.category, brand=item.brand, price=item.price, quantity=item.quantity,
        weight_kg=item.weight_kg, dimensions=item.dimensions, update_time=item.update_time,
    )
