"""Use cases of the CRM: a customer's own items, answered by the inventory service."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from crm_svc.domain import CustomerItem, CustomerPage, check_customer_id, customer_view, visible_to
from inventory_svc.domain import Item, ItemQuery, Page
from servicekit.client import CredentialsMissing
from servicekit.errors import NotFound, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)


class Inventory(Protocol):
    """What the CRM needs of the inventory service (InventoryClient provides it)."""

    def get_item(self, item_id: int) -> Item: ...
    def list_items(self, query: ItemQuery = ..., page_size: int = ..., page_token: str = ...) -> Page: ...
    def list_customer_items(
        self, customer_id: str, *, include_inactive: bool = ..., page_size: int = ..., page_token: str = ...
    ) -> Page: ...


def _customer_page(page: Page) -> CustomerPage:
    return CustomerPage([customer_view(item) for item in page.items], page.next_page_token, page.total_size)


@contextmanager
def _inventory_errors() -> Iterator[None]:
    """The customer's credentials are fine when this runs: inventory refusing the CRM's own
    token is the CRM's fault, and the customer sees UNAVAILABLE, not an auth error."""
    try:
        yield
    except (Unauthenticated, PermissionDenied) as error:
        log.error("inventory refused the CRM's service token: %s", error)
        raise Unavailable("the inventory service refused this service's credentials") from None
    except CredentialsMissing:
        raise
    except Unavailable:
        raise Unavailable("the inventory service is unavailable: try again shortly") from None


class CustomerItemsService:
    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def list_my_items(self, customer_id: str, page_size: int, page_token: str) -> CustomerPage:
        check_customer_id(customer_id)
        with _inventory_errors():
            page = self._inventory.list_customer_items(customer_id, page_size=page_size, page_token=page_token)
        return _customer_page(page)

    def get_my_item(self, customer_id: str, item_id: int) -> CustomerItem:
        check_customer_id(customer_id)
        with _inventory_errors():
            item = self._inventory.get_item(item_id)  # NotFound passes through as it is
        if not visible_to(item, customer_id):
            raise NotFound(f"item {item_id} not found")  # the same words as a missing item
        return customer_view(item)

    def search_my_items(
        self, customer_id: str, text: str, category: str, brand: str, page_size: int, page_token: str
    ) -> CustomerPage:
        check_customer_id(customer_id)
        query = ItemQuery(customer_id=customer_id, is_active=True, text=text, category=category, brand=brand)
        with _inventory_errors():
            page = self._inventory.list_items(query, page_size=page_size, page_token=page_token)
        return _customer_page(page)
