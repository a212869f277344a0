"""A typed client of crm.v1.CustomerItemsService, for a customer's token.

    from crm_client import CrmClient

    with CrmClient.connect("127.0.0.1:50052", token=lambda: customer_token) as crm:
        page = crm.list_my_items(page_size=20)      # a Page of crm.v1.CustomerItem
        item = crm.get_my_item(page.items[0].id)

This package depends on the generated stubs and servicekit's client side only: the CRM
server's code is not needed to call it.
"""

from crm_client.client import CrmClient
from servicekit.client import Page

__all__ = ["CrmClient", "Page"]
