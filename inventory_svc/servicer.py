"""inventory.v1.ItemService and ReservationService over gRPC: protobuf <-> domain, nothing else.

Errors are raised, never caught here: servicekit.status maps them to statuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeAlias, TypeVar

import grpc.aio

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.async_service import AsyncItemService
from inventory_svc.convert import (
    add_items,
    changes_from_update,
    duration_from_proto,
    item_fields_from_proto,
    item_to_proto,
    low_stock_event_to_proto,
    movement_to_proto,
    query_from_request,
    reservation_lines_from_proto,
    reservation_query_from_request,
    reservation_to_proto,
    stock_change_from_request,
    stock_changes_from_batch,
)
from inventory_svc.domain import Item, Page
from servicekit.auth import current_principal

# Generic in grpc's stubs alone: a string keeps it out of run time.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


Reply = TypeVar("Reply", pb.ListItemsResponse, pb.ListCustomerItemsResponse, pb.ListLowStockItemsResponse)


def _principal() -> str:
    principal = current_principal.get(None)
    return principal.subject if principal else ""


def _page_reply(reply: Reply, page: Page[Item]) -> Reply:
    add_items(reply.items, page.items)
    reply.next_page_token = page.next_page_token
    reply.total_size = page.total_size
    return reply


class ItemServicer(inventory_pb2_grpc.ItemServiceServicer):
    def __init__(self, items: AsyncItemService) -> None:
        self._items = items

    async def CreateItem(self, request: pb.CreateItemRequest, context: Context) -> pb.CreateItemResponse:
        item = await self._items.create_item(
            item_fields_from_proto(request.item), principal=_principal(), request_id=request.request_id
        )
        return pb.CreateItemResponse(item=item_to_proto(item))

    async def GetItem(self, request: pb.GetItemRequest, context: Context) -> pb.GetItemResponse:
        return pb.GetItemResponse(item=item_to_proto(await self._items.get_item(request.id)))

    async def ListItems(self, request: pb.ListItemsRequest, context: Context) -> pb.ListItemsResponse:
        page = await self._items.list_items(query_from_request(request), request.page_size, request.page_token)
        return _page_reply(pb.ListItemsResponse(), page)

    async def UpdateItem(self, request: pb.UpdateItemRequest, context: Context) -> pb.UpdateItemResponse:
        changes = changes_from_update(request.item, request.update_mask)
        item = await self._items.update_item(request.item.id, changes, request.item.etag, principal=_principal())
        return pb.UpdateItemResponse(item=item_to_proto(item))

    async def DeleteItem(self, request: pb.DeleteItemRequest, context: Context) -> pb.DeleteItemResponse:
        await self._items.delete_item(request.id, request.etag, principal=_principal())
        return pb.DeleteItemResponse()

    async def ListCustomerItems(
        self, request: pb.ListCustomerItemsRequest, context: Context
    ) -> pb.ListCustomerItemsResponse:
        page = await self._items.list_customer_items(
            request.customer_id, request.include_inactive, request.page_size, request.page_token
        )
        return _page_reply(pb.ListCustomerItemsResponse(), page)

    async def AdjustQuantity(self, request: pb.AdjustQuantityRequest, context: Context) -> pb.AdjustQuantityResponse:
        item = await self._items.adjust_quantity(
            stock_change_from_request(request), principal=_principal(), request_id=request.request_id
        )
        return pb.AdjustQuantityResponse(item=item_to_proto(item))

    async def BatchAdjustQuantities(
        self, request: pb.BatchAdjustQuantitiesRequest, context: Context
    ) -> pb.BatchAdjustQuantitiesResponse:
        items = await self._items.batch_adjust_quantities(
            stock_changes_from_batch(request), principal=_principal(), request_id=request.request_id
        )
        reply = pb.BatchAdjustQuantitiesResponse()
        add_items(reply.items, items)
        return reply

    async def ListLowStockItems(
        self, request: pb.ListLowStockItemsRequest, context: Context
    ) -> pb.ListLowStockItemsResponse:
        page = await self._items.list_low_stock_items(
            request.threshold if request.HasField("threshold") else None,
            request.page_size,
            request.page_token,
        )
        return _page_reply(pb.ListLowStockItemsResponse(), page)

    async def BatchGetItems(self, request: pb.BatchGetItemsRequest, context: Context) -> pb.BatchGetItemsResponse:
        reply = pb.BatchGetItemsResponse()
        add_items(reply.items, await self._items.batch_get_items(request.ids))
        return reply

    async def ListStockMovements(
        self, request: pb.ListStockMovementsRequest, context: Context
    ) -> pb.ListStockMovementsResponse:
        page = await self._items.list_stock_movements(request.item_id, request.page_size, request.page_token)
        return pb.ListStockMovementsResponse(
            movements=[movement_to_proto(movement) for movement in page.items], next_page_token=page.next_page_token
        )

    async def WatchLowStock(
        self, request: pb.WatchLowStockRequest, context: Context
    ) -> AsyncIterator[pb.WatchLowStockResponse]:
        events = self._items.watch_low_stock(
            request.customer_id,
            request.category,
            request.after_cursor if request.HasField("after_cursor") else None,
            subject=_principal(),
        )
        async with contextlib.aclosing(events):  # closed at once when the stream ends, not when collected
            async for event in events:
                yield low_stock_event_to_proto(event)


class ReservationServicer(inventory_pb2_grpc.ReservationServiceServicer):
    def __init__(self, items: AsyncItemService) -> None:
        self._items = items

    async def ReserveStock(self, request: pb.ReserveStockRequest, context: Context) -> pb.ReserveStockResponse:
        reservation = await self._items.reserve_stock(
            reservation_lines_from_proto(request.lines),
            duration_from_proto(request.ttl, "ttl") if request.HasField("ttl") else None,
            request.reference,
            principal=_principal(),
            request_id=request.request_id,
        )
        return pb.ReserveStockResponse(reservation=reservation_to_proto(reservation))

    async def ConfirmReservation(
        self, request: pb.ConfirmReservationRequest, context: Context
    ) -> pb.ConfirmReservationResponse:
        reservation = await self._items.confirm_reservation(
            request.id, principal=_principal(), request_id=request.request_id
        )
        return pb.ConfirmReservationResponse(reservation=reservation_to_proto(reservation))

    async def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: Context
    ) -> pb.ReleaseReservationResponse:
        reservation = await self._items.release_reservation(
            request.id, principal=_principal(), request_id=request.request_id
        )
        return pb.ReleaseReservationResponse(reservation=reservation_to_proto(reservation))

    async def ExtendReservation(
        self, request: pb.ExtendReservationRequest, context: Context
    ) -> pb.ExtendReservationResponse:
        reservation = await self._items.extend_reservation(
            request.id, duration_from_proto(request.ttl, "ttl") if request.HasField("ttl") else None
        )
        return pb.ExtendReservationResponse(reservation=reservation_to_proto(reservation))

    async def GetReservation(self, request: pb.GetReservationRequest, context: Context) -> pb.GetReservationResponse:
        return pb.GetReservationResponse(
            reservation=reservation_to_proto(await self._items.get_reservation(request.id))
        )

    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: Context
    ) -> pb.ListReservationsResponse:
        page = await self._items.list_reservations(
            reservation_query_from_request(request), request.page_size, request.page_token
        )
        return pb.ListReservationsResponse(
            reservations=[reservation_to_proto(reservation) for reservation in page.items],
            next_page_token=page.next_page_token,
        )
