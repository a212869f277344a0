"""A typed Python client for crm.v1.CustomerItemsService, for a customer's token.

    with CrmClient.connect("127.0.0.1:50052", token=lambda: customer_token) as crm:
        page = crm.list_my_items(page_size=20)      # a CustomerPage of CustomerItem
        item = crm.get_my_item(page.items[0].id)

Failures raise the errors of servicekit.errors (NotFound, InvalidField, Unavailable, ...).
"""

from __future__ import annotations

from typing import Any

from crm.v1 import crm_pb2 as pb
from crm.v1 import crm_pb2_grpc
from crm_svc.domain import CustomerItem, CustomerPage
from inventory_svc.convert import money_from_reply, timestamp_from_proto
from servicekit.client import ServiceClient


def customer_item_from_proto(message: pb.CustomerItem) -> CustomerItem:
    return CustomerItem(
        id=message.id, sku=message.sku, name=message.name, description=message.description,
        category=message.category, brand=message.brand,
        price=money_from_reply(message.price),
        quantity=message.quantity,
        weight_kg=message.weight_kg if message.HasField("weight_kg") else None,
        dimensions=message.dimensions,
        update_time=timestamp_from_proto(message.update_time) if message.HasField("update_time") else None,
    )


def _page(reply: Any) -> CustomerPage:
    return CustomerPage([customer_item_from_proto(item) for item in reply.items], reply.next_page_token,
                        reply.total_size)


class CrmClient(ServiceClient):
    stub_class = crm_pb2_grpc.CustomerItemsServiceStub
    service_name = pb.DESCRIPTOR.services_by_name["CustomerItemsService"].full_name
    idempotent_methods = ("ListMyItems", "GetMyItem", "SearchMyItems")

    def list_my_items(self, page_size: int = 0, page_token: str = "") -> CustomerPage:
        return _page(self._call(self._stub.ListMyItems, pb.ListMyItemsRequest(page_size=page_size, page_token=page_token)))

    def get_my_item(self, item_id: int) -> CustomerItem:
        return customer_item_from_proto(self._call(self._stub.GetMyItem, pb.GetMyItemRequest(id=item_id)).item)

    def search_my_items(self, query: str = "", *, category: str = "", brand: str = "",
                        page_size: int = 0, page_token: str = "") -> CustomerPage:
        request = pb.SearchMyItemsRequest(query=query, category=category, brand=brand,
                                          page_size=page_size, page_token=page_token)
        return _page(self._call(self._stub.SearchMyItems, request))
