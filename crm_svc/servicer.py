"""crm.v1.CustomerItemsService over gRPC: protobuf <-> domain, nothing else.

The customer is the verified token subject, handed over by the auth interceptor.
"""

from __future__ import annotations

import asyncio

import grpc

from crm.v1 import crm_pb2 as pb
from crm.v1 import crm_pb2_grpc
from crm_svc.domain import CustomerItem, CustomerPage
from crm_svc.service import CustomerItemsService
from inventory_svc.convert import money_to_proto, timestamp_to_proto
from servicekit.auth import current_principal

CUSTOMER_ROLE = "customer"
_CRM_SERVICE = pb.DESCRIPTOR.services_by_name["CustomerItemsService"]
# Every RPC needs a customer token; the auth interceptor denies any method missing here.
ROLE_FOR_METHOD = {f"/{_CRM_SERVICE.full_name}/{method.name}": CUSTOMER_ROLE for method in _CRM_SERVICE.methods}


def customer_item_to_proto(item: CustomerItem) -> pb.CustomerItem:
    message = pb.CustomerItem(
        id=item.id, sku=item.sku, name=item.name, description=item.description, category=item.category,
        brand=item.brand, price=money_to_proto(item.price), quantity=item.quantity, dimensions=item.dimensions,
    )
    if item.weight_kg is not None:
        message.weight_kg = item.weight_kg
    if item.update_time is not None:
        message.update_time.CopyFrom(timestamp_to_proto(item.update_time))
    return message


def _page_reply(page: CustomerPage) -> dict[str, object]:
    return {
        "items": [customer_item_to_proto(item) for item in page.items],
        "next_page_token": page.next_page_token,
        "total_size": page.total_size,
    }


def _customer_id() -> str:
    return current_principal.get().subject


class CustomerItemsServicer(crm_pb2_grpc.CustomerItemsServiceServicer):
    def __init__(self, items: CustomerItemsService) -> None:
        self._items = items

    async def ListMyItems(self, request: pb.ListMyItemsRequest, context: grpc.ServicerContext) -> pb.ListMyItemsResponse:
        page = await asyncio.to_thread(self._items.list_my_items, _customer_id(), request.page_size, request.page_token)
        return pb.ListMyItemsResponse(**_page_reply(page))

    async def GetMyItem(self, request: pb.GetMyItemRequest, context: grpc.ServicerContext) -> pb.GetMyItemResponse:
        item = await asyncio.to_thread(self._items.get_my_item, _customer_id(), request.id)
        return pb.GetMyItemResponse(item=customer_item_to_proto(item))

    async def SearchMyItems(
        self, request: pb.SearchMyItemsRequest, context: grpc.ServicerContext
    ) -> pb.SearchMyItemsResponse:
        page = await asyncio.to_thread(
            self._items.search_my_items,
            _customer_id(), request.query, request.category, request.brand, request.page_size, request.page_token,
        )
        return pb.SearchMyItemsResponse(**_page_reply(page))
