"""crm.v1.CustomerItemsService over gRPC: protobuf <-> domain, nothing else.

The customer is the verified token subject, handed over by the auth interceptor.
"""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar

import grpc.aio

from crm.v1 import crm_pb2 as pb
from crm.v1 import crm_pb2_grpc
from crm_svc.service import CustomerItemsService
from inventory.v1 import inventory_pb2
from servicekit.auth import current_principal
from servicekit.client import Page
from servicekit.contract import method_path

# Generic in grpc's stubs alone: a string keeps it out of run time.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


CUSTOMER_ROLE = "customer"
Reply = TypeVar("Reply", pb.ListMyItemsResponse, pb.SearchMyItemsResponse)
_CRM_SERVICE = pb.DESCRIPTOR.services_by_name["CustomerItemsService"]
# Every RPC needs a customer token; the auth interceptor denies any method missing here.
ROLE_FOR_METHOD = {method_path(method): CUSTOMER_ROLE for method in _CRM_SERVICE.methods}


def _customer_item_values(item: inventory_pb2.Item) -> dict[str, Any]:
    """What a customer sees of an item: no cost, thresholds, reorder ceiling, owner or etag."""
    return {
        "id": item.id,
        "sku": item.sku,
        "name": item.name,
        "description": item.description,
        "category": item.category,
        "brand": item.brand,
        "price": item.price,
        "quantity": item.quantity,
        "available_quantity": item.available_quantity,
        "dimensions": item.dimensions,
        "weight_kg": item.weight_kg if item.HasField("weight_kg") else None,
        "update_time": item.update_time if item.HasField("update_time") else None,
    }


def _page_reply(reply: Reply, page: Page[inventory_pb2.Item]) -> Reply:
    add = reply.items.add  # built in place: a message built apart would be copied in
    for item in page.items:
        add(**_customer_item_values(item))
    reply.next_page_token = page.next_page_token
    reply.total_size = page.total_size
    return reply


def _customer_id() -> str:
    return current_principal.get().subject


class CustomerItemsServicer(crm_pb2_grpc.CustomerItemsServiceServicer):
    def __init__(self, items: CustomerItemsService) -> None:
        self._items = items

    async def ListMyItems(self, request: pb.ListMyItemsRequest, context: Context) -> pb.ListMyItemsResponse:
        page = await self._items.list_my_items(_customer_id(), request.page_size, request.page_token)
        return _page_reply(pb.ListMyItemsResponse(), page)

    async def GetMyItem(self, request: pb.GetMyItemRequest, context: Context) -> pb.GetMyItemResponse:
        item = await self._items.get_my_item(_customer_id(), request.id)
        return pb.GetMyItemResponse(item=pb.CustomerItem(**_customer_item_values(item)))

    async def SearchMyItems(self, request: pb.SearchMyItemsRequest, context: Context) -> pb.SearchMyItemsResponse:
        page = await self._items.search_my_items(
            _customer_id(), request.query, request.category, request.brand, request.page_size, request.page_token
        )
        return _page_reply(pb.SearchMyItemsResponse(), page)
