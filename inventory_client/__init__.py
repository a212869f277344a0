"""Typed clients of inventory.v1.ItemService, for the services that call inventory.

    from inventory_client import InventoryClient, ItemFilter

    with InventoryClient.connect("127.0.0.1:50051", token=lambda: my_token) as inventory:
        item = inventory.get_item(42)                      # an inventory.v1.Item
        page = inventory.list_items(ItemFilter(category="tools"), page_size=50)
        inventory.adjust_quantity(42, delta=-1)

AsyncInventoryClient has the same methods as coroutines, over a grpc.aio channel. Both
return the generated messages themselves (no copies), carry the bearer token and a deadline
on every call, and raise the errors of servicekit.errors (NotFound, InvalidField,
Unavailable, ...) instead of grpc.RpcError. This package depends on the generated stubs
and servicekit only: the inventory server's code is not needed to call it.
"""

from inventory_client.aio import AsyncInventoryClient
from inventory_client.client import InventoryClient
from inventory_client.requests import ItemFilter, money, stock_change
from inventory_client.roles import READ_ROLE, WRITE_ROLE
from servicekit.client import Page

__all__ = [
    "READ_ROLE",
    "WRITE_ROLE",
    "AsyncInventoryClient",
    "InventoryClient",
    "ItemFilter",
    "Page",
    "money",
    "stock_change",
]
