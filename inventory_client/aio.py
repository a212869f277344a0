"""AsyncInventoryClient: inventory.v1.ItemService over a grpc.aio channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from inventory.v1 import inventory_pb2 as pb
from inventory_client import requests
from inventory_client.client import InventoryClient
from inventory_client.requests import ItemFilter, ItemServiceContract
from servicekit.client import AsyncServiceClient, Page

if TYPE_CHECKING:
    from inventory.v1.inventory_pb2_grpc import ItemServiceAsyncStub
else:
    # The .pyi alone knows the asyncio stub: at run time one class serves both kinds of channel.
    from inventory.v1.inventory_pb2_grpc import ItemServiceStub as ItemServiceAsyncStub


class AsyncInventoryClient(ItemServiceContract, AsyncServiceClient[ItemServiceAsyncStub]):
    """InventoryClient for asyncio: the same methods and parameters, as coroutines
    (watch_low_stock is an async iterator), over a grpc.aio channel.

        async with AsyncInventoryClient.connect(target, token) as inventory:
            item = await inventory.get_item(42)
    """

    async def create_item(self, item: pb.Item, *, request_id: str = "") -> pb.Item:
        request = requests.create_item(item, request_id)
        return (await self._call(self._stub.CreateItem, request, retry_safe=bool(request_id))).item

    async def get_item(self, item_id: int) -> pb.Item:
        return (await self._call(self._stub.GetItem, pb.GetItemRequest(id=item_id))).item

    async def list_items(
        self,
        where: ItemFilter | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Item]:
        return Page.of(await self._call(self._stub.ListItems, requests.list_items(where, page_size, page_token)))

    async def update_item(self, item_id: int, changes: Mapping[str, Any], *, etag: str = "") -> pb.Item:
        return (await self._call(self._stub.UpdateItem, requests.update_item(item_id, changes, etag))).item

    async def delete_item(self, item_id: int, *, etag: str = "") -> None:
        await self._call(self._stub.DeleteItem, pb.DeleteItemRequest(id=item_id, etag=etag))

    async def list_customer_items(
        self,
        customer_id: str,
        *,
        include_inactive: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Item]:
        request = requests.list_customer_items(customer_id, include_inactive, page_size, page_token)
        return Page.of(await self._call(self._stub.ListCustomerItems, request))

    async def adjust_quantity(
        self,
        item_id: int,
        *,
        delta: int | None = None,
        set_to: int | None = None,
        reason: int = 0,
        note: str = "",
        request_id: str = "",
    ) -> pb.Item:
        request = requests.adjust_quantity(item_id, delta, set_to, reason, note, request_id)
        return (await self._call(self._stub.AdjustQuantity, request, retry_safe=bool(request_id))).item

    async def batch_adjust_quantities(
        self, changes: Sequence[pb.AdjustQuantityRequest], *, request_id: str = ""
    ) -> Sequence[pb.Item]:
        request = requests.batch_adjust_quantities(changes, request_id)
        return (await self._call(self._stub.BatchAdjustQuantities, request, retry_safe=bool(request_id))).items

    async def list_low_stock_items(
        self,
        *,
        threshold: int | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Item]:
        request = requests.list_low_stock_items(threshold, page_size, page_token)
        return Page.of(await self._call(self._stub.ListLowStockItems, request))

    async def batch_get_items(self, item_ids: Sequence[int]) -> Sequence[pb.Item]:
        return (await self._call(self._stub.BatchGetItems, requests.batch_get_items(item_ids))).items

    async def list_stock_movements(
        self,
        item_id: int,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.StockMovement]:
        request = requests.list_stock_movements(item_id, page_size, page_token)
        return requests.movements_page(await self._call(self._stub.ListStockMovements, request))

    def watch_low_stock(
        self,
        *,
        customer_id: str = "",
        category: str = "",
        after_cursor: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.WatchLowStockResponse]:
        request = requests.watch_low_stock(customer_id, category, after_cursor)
        return self._stream(self._stub.WatchLowStock, request, timeout_s)


# The same documentation as the synchronous methods, written once.
for _name, _method in vars(AsyncInventoryClient).items():
    if callable(_method) and not _name.startswith("_") and _method.__doc__ is None:
        _method.__doc__ = getattr(InventoryClient, _name).__doc__
