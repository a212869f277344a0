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

from typing import Any, Mapping

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.convert import (
    fields_to_proto,
    item_from_proto,
    query_to_request,
    update_to_proto,
)
from inventory_svc.domain import Item, ItemFields, ItemQuery, Page
from servicekit.client import ServiceClient

def _page(reply: Any) -> Page:
    return Page([item_from_proto(item) for item in reply.items], reply.next_page_token, reply.total_size)


class InventoryClient(ServiceClient):
    stub_class = inventory_pb2_grpc.ItemServiceStub
    service_name = pb.DESCRIPTOR.services_by_name["ItemService"].full_name
    idempotent_methods = ("GetItem", "ListItems", "ListCustomerItems", "ListLowStockItems")

    def create_item(self, fields: ItemFields) -> Item:
        reply = self._call(self._stub.CreateItem, pb.CreateItemRequest(item=fields_to_proto(fields)))
        return item_from_proto(reply.item)

    def get_item(self, item_id: int) -> Item:
        return item_from_proto(self._call(self._stub.GetItem, pb.GetItemRequest(id=item_id)).item)

    def list_items(self, query: ItemQuery = ItemQuery(), page_size: int = 0, page_token: str = "") -> Page:
        return _page(self._call(self._stub.ListItems, query_to_request(query, page_size, page_token)))

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

    def adjust_quantity(self, item_id: int, *, delta: int | None = None, set_to: int | None = None) -> Item:
        request = pb.AdjustQuantityRequest(id=item_id)
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
