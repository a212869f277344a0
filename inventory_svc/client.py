"""A typed Python client for inventory.v1.ItemService.

    client = InventoryClient.connect("127.0.0.1:50051", token=lambda: my_token)
    item = client.get_item(42)                 # an inventory_svc.domain.Item
    client.adjust_quantity(42, delta=-1)

Every call carries the bearer token and a deadline (the remaining time of the call being
served, when there is one, capped at `timeout_s`); failures raise the errors of
servicekit.errors (NotFound, InvalidField, Unavailable, ...), never grpc.RpcError for a
status they cover. Reads are retried on UNAVAILABLE with backoff by the channel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Mapping

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.convert import (
    fields_to_proto,
    item_from_proto,
    low_stock_event_from_proto,
    movement_from_proto,
    query_to_request,
    reason_to_proto,
    update_to_proto,
)
from inventory_svc.domain import Item, ItemFields, ItemQuery, MovementReason, Page, StockMovement
from servicekit.client import ServiceClient

def _page(reply: Any) -> Page:
    return Page([item_from_proto(item) for item in reply.items], reply.next_page_token, reply.total_size)


class InventoryClient(ServiceClient):
    stub_class = inventory_pb2_grpc.ItemServiceStub
    service_name = pb.DESCRIPTOR.services_by_name["ItemService"].full_name
    idempotent_methods = ("GetItem", "ListItems", "ListCustomerItems", "ListLowStockItems", "BatchGetItems",
                          "ListStockMovements")

    def create_item(self, fields: ItemFields, *, request_id: str = "") -> Item:
        """Pass a request_id (a UUID) to make a retry of this call safe."""
        request = pb.CreateItemRequest(item=fields_to_proto(fields), request_id=request_id)
        return item_from_proto(self._call(self._stub.CreateItem, request).item)

    def get_item(self, item_id: int) -> Item:
        return item_from_proto(self._call(self._stub.GetItem, pb.GetItemRequest(id=item_id)).item)

    def list_items(self, query: ItemQuery | None = None, page_size: int = 0, page_token: str = "") -> Page:
        request = query_to_request(query or ItemQuery(), page_size, page_token)
        return _page(self._call(self._stub.ListItems, request))

    def update_item(self, item_id: int, changes: Mapping[str, Any], etag: str = "") -> Item:
        reply = self._call(self._stub.UpdateItem, update_to_proto(item_id, changes, etag))
        return item_from_proto(reply.item)

    def delete_item(self, item_id: int, etag: str = "") -> None:
        self._call(self._stub.DeleteItem, pb.DeleteItemRequest(id=item_id, etag=etag))

    def list_customer_items(
        self, customer_id: str, *, include_inactive: bool = False, page_size: int = 0, page_token: str = ""
    ) -> Page:
        request = pb.ListCustomerItemsRequest(
            customer_id=customer_id, include_inactive=include_inactive, page_size=page_size, page_token=page_token
        )
        return _page(self._call(self._stub.ListCustomerItems, request))

    def adjust_quantity(
        self, item_id: int, *, delta: int | None = None, set_to: int | None = None,
        reason: MovementReason | None = None, note: str = "", request_id: str = "",
    ) -> Item:
        """Pass a request_id (a UUID) to make a retry of this call safe."""
        request = pb.AdjustQuantityRequest(
            id=item_id, reason=reason_to_proto(reason) if reason else 0, note=note, request_id=request_id
        )
        if delta is not None:
            request.delta = delta
        if set_to is not None:
            request.set_quantity = set_to
        return item_from_proto(self._call(self._stub.AdjustQuantity, request).item)

    def list_low_stock_items(self, threshold: int | None = None, page_size: int = 0, page_token: str = "") -> Page:
        request = pb.ListLowStockItemsRequest(page_size=page_size, page_token=page_token)
        if threshold is not None:
            request.threshold = threshold
        return _page(self._call(self._stub.ListLowStockItems, request))

    def batch_get_items(self, item_ids: Sequence[int]) -> list[Item]:
        reply = self._call(self._stub.BatchGetItems, pb.BatchGetItemsRequest(ids=item_ids))
        return [item_from_proto(item) for item in reply.items]

    def list_stock_movements(self, item_id: int, page_size: int = 0, page_token: str = "") -> Page[StockMovement]:
        request = pb.ListStockMovementsRequest(item_id=item_id, page_size=page_size, page_token=page_token)
        reply = self._call(self._stub.ListStockMovements, request)
        return Page([movement_from_proto(movement) for movement in reply.movements], reply.next_page_token)

    def watch_low_stock(
        self, *, customer_id: str = "", category: str = "", after_cursor: int | None = None, timeout_s: float | None = None
    ) -> Iterator[StockMovement]:
        """Low-stock events as they happen (low_stock_change says which kind; id is the
        cursor to resume after). Runs until `timeout_s`, then raises DeadlineExceeded, or
        forever when None; closing the iterator ends the stream."""
        request = pb.WatchLowStockRequest(customer_id=customer_id, category=category)
        if after_cursor is not None:
            request.after_cursor = after_cursor
        for event in self._stream(self._stub.WatchLowStock, request, timeout_s):
            yield low_stock_event_from_proto(event)
