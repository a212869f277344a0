"""Use cases of the CRM: a customer's own items, answered by the inventory service.

The service is written against the Inventory protocol (AsyncInventoryClient's methods) and
answers with inventory.v1.Item messages that the customer may see; the servicer maps them
straight to crm.v1.CustomerItem: no model of inventory's own in between.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from inventory.v1 import inventory_pb2
from inventory_client import ItemFilter, Page
from servicekit.credentials import CredentialsMissing
from servicekit.errors import (
    Cancelled,
    InvalidField,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

MAX_CUSTOMER_ID_LENGTH = 100  # as long as an item's customer_id may be


class ItemNotFound(NotFound):
    """Missing, inactive or another customer's: the same answer, so none reveals an item."""

    reason = "ITEM_NOT_FOUND"

    def __init__(self, item_id: int) -> None:
        super().__init__(f"item {item_id} not found", metadata={"item_id": str(item_id)})


class NotACustomer(PermissionDenied):
    reason = "NOT_A_CUSTOMER"


class InventoryUnavailable(Unavailable):
    """Inventory is down, at its limit, or refused the CRM: nothing the customer did."""

    reason = "INVENTORY_UNAVAILABLE"


class Inventory(Protocol):
    """What the CRM needs of the inventory service (AsyncInventoryClient provides it)."""

    async def get_item(self, item_id: int) -> inventory_pb2.Item: ...
    async def list_items(
        self,
        where: ItemFilter | None = ...,
        *,
        page_size: int = ...,
        page_token: str = ...,
    ) -> Page[inventory_pb2.Item]: ...
    async def list_customer_items(
        self,
        customer_id: str,
        *,
        include_inactive: bool = ...,
        page_size: int = ...,
        page_token: str = ...,
    ) -> Page[inventory_pb2.Item]: ...


def check_customer_id(customer_id: str) -> None:
    """A customer token's subject names the customer: one that no item could name is refused
    as such, not as a field of a request the customer never wrote."""
    if not customer_id.strip() or len(customer_id) > MAX_CUSTOMER_ID_LENGTH or "\x00" in customer_id:
        raise NotACustomer("this token's subject is not a customer id")


def visible_to(item: inventory_pb2.Item, customer_id: str) -> bool:
    """A customer sees their own active items, and nothing else."""
    is_active = item.is_active if item.HasField("is_active") else True
    return item.customer_id == customer_id and is_active


@contextmanager
def _inventory_errors() -> Iterator[None]:
    """Inventory's errors as the CRM's own (crm.v1 reasons). The customer's credentials are
    fine when this runs: inventory refusing the CRM's own token is the CRM's fault, and the
    customer sees UNAVAILABLE, not an auth error."""
    try:
        yield
    except InvalidField as error:  # the customer's page token or filter: the same fields
        raise InvalidField.of(error.field_violations, str(error)) from None
    except (Unauthenticated, PermissionDenied) as error:
        log.error("inventory refused the CRM's service token: %s", error)
        raise InventoryUnavailable("the inventory service refused this service's credentials") from None
    except CredentialsMissing:
        raise
    except (Unavailable, ResourceExhausted, Cancelled):
        # RESOURCE_EXHAUSTED is the CRM's own cap at inventory, CANCELLED a replica stopping:
        # neither is the customer's doing, and both pass with a retry.
        raise InventoryUnavailable("the inventory service is unavailable: try again shortly") from None


class CustomerItemsService:
    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    async def list_my_items(self, customer_id: str, page_size: int, page_token: str) -> Page[inventory_pb2.Item]:
        """The customer's active items (inventory filters them)."""
        check_customer_id(customer_id)
        with _inventory_errors():
            return await self._inventory.list_customer_items(customer_id, page_size=page_size, page_token=page_token)

    async def get_my_item(self, customer_id: str, item_id: int) -> inventory_pb2.Item:
        check_customer_id(customer_id)
        try:
            with _inventory_errors():
                item = await self._inventory.get_item(item_id)
        except NotFound:
            raise ItemNotFound(item_id) from None
        if not visible_to(item, customer_id):
            raise ItemNotFound(item_id)  # the same answer as a missing item
        return item

    async def search_my_items(
        self,
        customer_id: str,
        text: str,
        category: str,
        brand: str,
        page_size: int,
        page_token: str,
    ) -> Page[inventory_pb2.Item]:
        """The customer's active items that match (inventory filters them)."""
        check_customer_id(customer_id)
        where = ItemFilter(customer_id=customer_id, is_active=True, query=text, category=category, brand=brand)
        with _inventory_errors():
            return await self._inventory.list_items(where, page_size=page_size, page_token=page_token)
