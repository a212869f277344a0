"""crm.v1.CustomerItemsService over gRPC: protobuf <-> domain, nothing else.

The customer is the verified token subject, handed over by the auth interceptor.
"""

from __future__ import annotations

import grpc.aio

from crm.v1 import crm_pb2 as pb
from crm.v1 import crm_pb2_grpc
from crm_svc.service import CustomerItemsService
from servicekit.auth import current_principal
from servicekit.client import Page

CUSTOMER_ROLE = "customer"
_CRM_SERVICE = pb.DESCRIPTOR.services_by_name["CustomerItemsService"]
# Every RPC needs a customer token; the auth interceptor denies any method missing here.
ROLE_FOR_METHOD = {f"/{_CRM_SERVICE.full_name}/{method.name}": CUSTOMER_ROLE for method in _CRM_SERVICE.methods}


def _page_reply(page: Page[pb.CustomerItem]) -> dict[str, object]:
    return {"items": page.items, "next_page_token": page.next_page_token, "total_size": page.total_size}


def _customer_id() -> str:
    return current_principal.get().subject


class CustomerItemsServicer(crm_pb2_grpc.CustomerItemsServiceServicer):
    def __init__(self, items: CustomerItemsService) -> None:
        self._items = items

    async def ListMyItems(
        self, request: pb.ListMyItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMyItemsResponse:
        page = await self._items.list_my_items(_customer_id(), request.page_size, request.page_token)
        return pb.ListMyItemsResponse(**_page_reply(page))

    async def GetMyItem(self, request: pb.GetMyItemRequest, context: grpc.aio.ServicerContext) -> pb.GetMyItemResponse:
        return pb.GetMyItemResponse(item=await self._items.get_my_item(_customer_id(), request.id))

    async def SearchMyItems(
        self, request: pb.SearchMyItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchMyItemsResponse:
        page = await self._items.search_my_items(
            _customer_id(), request.query, request.category, request.brand, request.page_size, request.page_token
        )
        return pb.SearchMyItemsResponse(**_page_reply(page))
