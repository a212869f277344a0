"""AsyncInventoryClient and AsyncReservationClient: inventory.v1.ItemService and
ReservationService over a grpc.aio channel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from inventory.v1 import inventory_pb2 as pb
from inventory_client import requests
from inventory_client.client import InventoryClient, ReservationClient
from inventory_client.requests import (
    ItemFilter,
    ItemServiceContract,
    ReservationLines,
    ReservationServiceContract,
    Ttl,
)
from servicekit.client import AsyncServiceClient, Page

if TYPE_CHECKING:
    from inventory.v1.inventory_pb2_grpc import ItemServiceAsyncStub, ReservationServiceAsyncStub
else:
    # The .pyi alone knows the asyncio stubs: at run time one class serves both kinds of channel.
    from inventory.v1.inventory_pb2_grpc import ItemServiceStub as ItemServiceAsyncStub
    from inventory.v1.inventory_pb2_grpc import ReservationServiceStub as ReservationServiceAsyncStub


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


class AsyncReservationClient(ReservationServiceContract, AsyncServiceClient[ReservationServiceAsyncStub]):
    """ReservationClient for asyncio: the same methods and parameters, as coroutines, over a
    grpc.aio channel.

        async with AsyncReservationClient.connect(target, token) as reservations:
            held = await reservations.reserve_stock({42: 2}, reference="cart-7")
    """

    async def reserve_stock(
        self, lines: ReservationLines, *, ttl: Ttl | None = None, reference: str = "", request_id: str = ""
    ) -> pb.Reservation:
        request = requests.reserve_stock(lines, ttl, reference, request_id)
        return (await self._call(self._stub.ReserveStock, request, retry_safe=bool(request_id))).reservation

    async def confirm_reservation(self, reservation_id: int, *, request_id: str = "") -> pb.Reservation:
        request = pb.ConfirmReservationRequest(id=reservation_id, request_id=request_id)
        return (await self._call(self._stub.ConfirmReservation, request, retry_safe=bool(request_id))).reservation

    async def release_reservation(self, reservation_id: int, *, request_id: str = "") -> pb.Reservation:
        request = pb.ReleaseReservationRequest(id=reservation_id, request_id=request_id)
        return (await self._call(self._stub.ReleaseReservation, request, retry_safe=bool(request_id))).reservation

    async def extend_reservation(self, reservation_id: int, ttl: Ttl) -> pb.Reservation:
        request = requests.extend_reservation(reservation_id, ttl)
        return (await self._call(self._stub.ExtendReservation, request)).reservation

    async def get_reservation(self, reservation_id: int) -> pb.Reservation:
        request = pb.GetReservationRequest(id=reservation_id)
        return (await self._call(self._stub.GetReservation, request)).reservation

    async def list_reservations(
        self,
        *,
        state: int = 0,
        reference: str = "",
        item_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Reservation]:
        request = requests.list_reservations(state, reference, item_id, page_size, page_token)
        return requests.reservations_page(await self._call(self._stub.ListReservations, request))


# The same documentation as the synchronous methods, written once.
for _async_class, _sync_class in ((AsyncInventoryClient, InventoryClient), (AsyncReservationClient, ReservationClient)):
    for _name, _method in vars(_async_class).items():
        if callable(_method) and not _name.startswith("_") and _method.__doc__ is None:
            _method.__doc__ = getattr(_sync_class, _name).__doc__
