"""CrmClient: crm.v1.CustomerItemsService over a synchronous grpc.Channel.

Failures raise the errors of servicekit.errors (NotFound, InvalidField, Unavailable, ...).
"""

from __future__ import annotations

from crm.v1 import crm_pb2 as pb
from crm.v1 import crm_pb2_grpc
from servicekit.client import Page, ServiceClient


class CrmClient(ServiceClient[crm_pb2_grpc.CustomerItemsServiceStub]):
    stub_class = crm_pb2_grpc.CustomerItemsServiceStub
    service = pb.DESCRIPTOR.services_by_name["CustomerItemsService"]

    def list_my_items(self, page_size: int = 0, page_token: str = "") -> Page[pb.CustomerItem]:
        """A page of the customer's own active items."""
        request = pb.ListMyItemsRequest(page_size=page_size, page_token=page_token)
        return Page.of(self._call(self._stub.ListMyItems, request))

    def get_my_item(self, item_id: int) -> pb.CustomerItem:
        """One of the customer's items; NotFound for a missing one or another customer's."""
        return self._call(self._stub.GetMyItem, pb.GetMyItemRequest(id=item_id)).item

    def search_my_items(
        self, query: str = "", *, category: str = "", brand: str = "", page_size: int = 0, page_token: str = ""
    ) -> Page[pb.CustomerItem]:
        """A page of the customer's items matching the words of `query` and the filters."""
        request = pb.SearchMyItemsRequest(
            query=query, category=category, brand=brand, page_size=page_size, page_token=page_token
        )
        return Page.of(self._call(self._stub.SearchMyItems, request))
