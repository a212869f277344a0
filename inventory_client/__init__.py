"""Typed clients of inventory.v1.ItemService and ReservationService, for the services that
call inventory.

    from inventory_client import InventoryClient, ItemFilter, ReservationClient

    with InventoryClient.connect("127.0.0.1:50051", token=lambda: my_token) as inventory:
        item = inventory.get_item(42)                      # an inventory.v1.Item
        page = inventory.list_items(ItemFilter(category="tools"), page_size=50)
        inventory.adjust_quantity(42, delta=-1)

    with ReservationClient.connect("127.0.0.1:50051", token=lambda: my_token) as reservations:
        held = reservations.reserve_stock({42: 2}, reference="cart-7")  # an inventory.v1.Reservation
        reservations.confirm_reservation(held.id)

AsyncInventoryClient and AsyncReservationClient have the same methods as coroutines, over a
grpc.aio channel. All return the generated messages themselves (no copies), carry the bearer
token and a deadline on every call, and raise the errors of servicekit.errors (NotFound,
InvalidField, FailedPrecondition, Unavailable, ...) instead of grpc.RpcError. This package
depends on the generated stubs and servicekit only: the inventory server's code is not
needed to call it.
"""

from inventory_client.aio import AsyncInventoryClient, AsyncReservationClient
from inventory_client.client import InventoryClient, ReservationClient
from inventory_client.requests import ItemFilter, money, stock_change
from inventory_client.roles import READ_ROLE, WRITE_ROLE
from servicekit.client import Page

__all__ = [
    "READ_ROLE",
    "WRITE_ROLE",
    "AsyncInventoryClient",
    "AsyncReservationClient",
    "InventoryClient",
    "ItemFilter",
    "Page",
    "ReservationClient",
    "money",
    "stock_change",
]
