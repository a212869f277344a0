"""The typed Python clients: every RPC covered, domain values in and out, errors as exceptions."""

from __future__ import annotations

import itertools
import re

import pytest

from crm.v1 import crm_pb2
from crm_svc.client import CrmClient
from inventory.v1 import inventory_pb2
from inventory_svc.client import InventoryClient
from inventory_svc.domain import ItemFields, ItemQuery, LowStockChange, Money
from servicekit.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidField, NotFound, PermissionDenied
from tests.helpers import mint


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(
    ("client_class", "service"),
    [
        (InventoryClient, inventory_pb2.DESCRIPTOR.services_by_name["ItemService"]),
        (CrmClient, crm_pb2.DESCRIPTOR.services_by_name["CustomerItemsService"]),
    ],
)
def test_each_client_has_a_method_for_every_rpc_of_its_contract(client_class, service):
    missing = [method.name for method in service.methods if not callable(getattr(client_class, snake_case(method.name), None))]

    assert missing == []


@pytest.fixture
def inventory(inventory_address):
    with InventoryClient.connect(inventory_address, token=mint) as client:
        yield client


def widget(**overrides) -> ItemFields:
    values = dict(sku="W-1", name="Widget", price=Money("USD", 2_500_000_000), quantity=3, low_stock_threshold=1,
                  customer_id="alice", cost=Money("USD", 1_000_000_000), weight_kg=0.5, max_quantity=9)
    values.update(overrides)
    return ItemFields(**values)


def test_inventory_client_round_trips_every_call(inventory):
    created = inventory.create_item(widget())
    assert created.writable_fields == widget()
    assert inventory.get_item(created.id) == created

    updated = inventory.update_item(created.id, {"name": "Gadget", "weight_kg": None}, etag=created.etag)
    assert (updated.name, updated.weight_kg, updated.version) == ("Gadget", None, created.version + 1)

    assert inventory.adjust_quantity(created.id, delta=-2).quantity == 1
    assert inventory.adjust_quantity(created.id, set_to=7).quantity == 7
    assert [i.id for i in inventory.list_items(ItemQuery(text="gadg")).items] == [created.id]
    assert [i.id for i in inventory.list_customer_items("alice").items] == [created.id]
    assert [i.id for i in inventory.list_low_stock_items(threshold=7).items] == [created.id]
    assert inventory.batch_get_items([created.id]) == [inventory.get_item(created.id)]
    assert [m.delta for m in inventory.list_stock_movements(created.id).items] == [6, -2, 3]  # newest first
    events = inventory.watch_low_stock(after_cursor=0, timeout_s=10)
    assert [(e.item_id, e.low_stock_change) for e in itertools.islice(events, 2)] == [
        (created.id, LowStockChange.BECAME_LOW), (created.id, LowStockChange.RECOVERED),
    ]
    events.close()

    inventory.delete_item(created.id)
    with pytest.raises(NotFound):
        inventory.get_item(created.id)


def test_inventory_client_raises_domain_errors(inventory):
    created = inventory.create_item(widget())

    with pytest.raises(AlreadyExists):
        inventory.create_item(widget())
    with pytest.raises(InvalidField) as invalid:
        inventory.create_item(widget(sku="W-2", name=""))
    assert invalid.value.field == "item.name"
    with pytest.raises(FailedPrecondition):
        inventory.adjust_quantity(created.id, delta=-100)
    with pytest.raises(Conflict):
        inventory.update_item(created.id, {"name": "x"}, etag="999")


def test_inventory_client_with_a_read_only_token_cannot_write(inventory_address):
    with InventoryClient.connect(inventory_address, token=lambda: mint(roles=("inventory.read",))) as reader:
        with pytest.raises(PermissionDenied):
            reader.create_item(widget())


def test_crm_client_reaches_exactly_the_customers_own_items(inventory, crm_address):
    own = inventory.create_item(widget())
    other = inventory.create_item(widget(sku="W-9", customer_id="bob"))

    with CrmClient.connect(crm_address, token=lambda: mint(subject="alice", roles=("customer",))) as crm:
        assert [item.id for item in crm.list_my_items().items] == [own.id]
        assert crm.get_my_item(own.id).price == Money("USD", 2_500_000_000)
        assert [item.sku for item in crm.search_my_items("w-", category="").items] == ["W-1"]
        with pytest.raises(NotFound):
            crm.get_my_item(other.id)
