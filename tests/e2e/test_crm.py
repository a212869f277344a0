"""crm.v1.CustomerItemsService end to end: CRM server -> real inventory server -> real database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest

from crm.v1 import crm_pb2 as crm
from crm.v1 import crm_pb2_grpc
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from tests.helpers import (
    all_pages,
    authorized_channel,
    bad_request_fields,
    create,
    error_reason,
    mint,
    page_token_with_total,
    rpc_error,
    usd,
)

CustomerStubs = Callable[..., crm_pb2_grpc.CustomerItemsServiceStub]


@contextmanager
def customer_stubs(crm_address: str) -> Iterator[CustomerStubs]:
    """Gives CRM stubs whose calls carry a customer token for the subject given."""
    channels = []

    def stub_for(customer_id: str, roles: tuple[str, ...] = ("customer",)) -> crm_pb2_grpc.CustomerItemsServiceStub:
        channel = authorized_channel(crm_address, mint(subject=customer_id, roles=roles))
        channels.append(channel)
        return crm_pb2_grpc.CustomerItemsServiceStub(channel)

    try:
        yield stub_for
    finally:
        for channel in channels:
            channel.close()


@pytest.fixture
def as_customer(crm_address) -> Iterator[CustomerStubs]:
    with customer_stubs(crm_address) as stub_for:
        yield stub_for


@pytest.fixture
def as_customer_any_db(crm_address_any_db) -> Iterator[CustomerStubs]:
    """As as_customer, for calls that never reach storage: run once, not once per database."""
    with customer_stubs(crm_address_any_db) as stub_for:
        yield stub_for


@pytest.fixture
def shop(items_stub) -> dict[str, int]:
    """Items of two customers and of nobody; returns ids by sku."""
    specs = [
        dict(
            sku="AL-KB",
            name="Keyboard",
            category="peripherals",
            brand="Keyco",
            customer_id="alice",
            price=usd(90),
            cost=usd(40),
            quantity=5,
            low_stock_threshold=2,
        ),
        dict(sku="AL-MS", name="Mouse 100%", category="peripherals", brand="Pointa", customer_id="alice"),
        dict(sku="AL-MN", name="Monitor", category="displays", brand="Viewo", customer_id="alice"),
        dict(
            sku="AL-OLD",
            name="Old keyboard",
            category="peripherals",
            brand="Keyco",
            customer_id="alice",
            is_active=False,
        ),
        dict(sku="BO-KB", name="Keyboard", category="peripherals", brand="Keyco", customer_id="bob"),
        dict(sku="NOBODY", name="Keyboard", category="peripherals", brand="Keyco"),
    ]
    return {spec["sku"]: create(items_stub, **spec).id for spec in specs}


def skus(reply) -> list[str]:
    return [item.sku for item in reply.items]


def test_list_my_items_shows_only_the_callers_active_items(as_customer, shop):
    reply = as_customer("alice").ListMyItems(crm.ListMyItemsRequest())

    assert skus(reply) == ["AL-KB", "AL-MS", "AL-MN"]
    assert reply.total_size == 3


def test_customer_view_carries_no_internal_fields(as_customer, shop):
    item = as_customer("alice").GetMyItem(crm.GetMyItemRequest(id=shop["AL-KB"])).item

    assert (item.sku, item.price, item.quantity) == ("AL-KB", usd(90), 5)
    assert {field.name for field in item.DESCRIPTOR.fields}.isdisjoint(
        {"cost", "low_stock_threshold", "max_quantity", "is_active", "customer_id", "etag"}
    )


def test_another_customers_item_answers_exactly_like_a_missing_one(as_customer, shop):
    alice = as_customer("alice")
    missing_id = max(shop.values()) + 1000

    foreign = rpc_error(alice.GetMyItem, crm.GetMyItemRequest(id=shop["BO-KB"]))
    missing = rpc_error(alice.GetMyItem, crm.GetMyItemRequest(id=missing_id))

    assert foreign.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    assert foreign.details() == f"item {shop['BO-KB']} not found"
    assert missing.details() == f"item {missing_id} not found"
    assert error_reason(foreign) == ("ITEM_NOT_FOUND", "crm.v1", {"item_id": str(shop["BO-KB"])})
    assert error_reason(missing) == ("ITEM_NOT_FOUND", "crm.v1", {"item_id": str(missing_id)})


def test_a_customer_sees_the_available_quantity_drop_when_units_of_their_item_are_reserved(
    as_customer, shop, inventory_address
):
    alice = as_customer("alice")
    keyboard = shop["AL-KB"]
    before = alice.GetMyItem(crm.GetMyItemRequest(id=keyboard)).item

    with authorized_channel(inventory_address, mint()) as channel:
        inventory_pb2_grpc.ReservationServiceStub(channel).ReserveStock(
            pb.ReserveStockRequest(lines=[pb.ReservationLine(item_id=keyboard, quantity=2)], reference="cart-1")
        )

    after = alice.GetMyItem(crm.GetMyItemRequest(id=keyboard)).item
    listed = next(item for item in alice.ListMyItems(crm.ListMyItemsRequest()).items if item.id == keyboard)
    assert (before.quantity, before.available_quantity) == (5, 5)
    assert (after.quantity, after.available_quantity) == (5, 3)
    assert listed.available_quantity == 3


@pytest.mark.parametrize("sku", ["AL-OLD", "NOBODY"])
def test_inactive_or_unowned_items_are_not_found(as_customer, shop, sku):
    error = rpc_error(as_customer("alice").GetMyItem, crm.GetMyItemRequest(id=shop[sku]))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == ("ITEM_NOT_FOUND", "crm.v1", {"item_id": str(shop[sku])})


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"query": "KEYB"}, ["AL-KB"]),
        ({"query": "al-m"}, ["AL-MS", "AL-MN"]),
        ({"query": "displ"}, ["AL-MN"]),
        ({"query": "point"}, ["AL-MS"]),
        ({"query": "%"}, ["AL-MS"]),
        ({"query": "_"}, []),
        ({"category": "peripherals"}, ["AL-KB", "AL-MS"]),
        ({"brand": "Keyco"}, ["AL-KB"]),
        ({"query": "o", "category": "peripherals", "brand": "Pointa"}, ["AL-MS"]),
        ({}, ["AL-KB", "AL-MS", "AL-MN"]),
    ],
)
def test_search_my_items_matches_text_and_filters_within_the_callers_items(as_customer, shop, request_fields, expected):
    reply = as_customer("alice").SearchMyItems(crm.SearchMyItemsRequest(**request_fields))

    assert skus(reply) == expected
    assert reply.total_size == len(expected)


def test_paging_through_the_crm_visits_every_item_once(as_customer, items_stub):
    ids = [create(items_stub, customer_id="carol").id for _ in range(5)]
    carol = as_customer("carol")

    pages = all_pages(lambda token: carol.ListMyItems(crm.ListMyItemsRequest(page_size=2, page_token=token)))

    assert [item.id for page in pages for item in page.items] == ids
    assert len(pages) == 3


def test_search_pages_too(as_customer, items_stub):
    ids = [create(items_stub, customer_id="carol", name=f"Lamp {n}").id for n in range(3)]
    carol = as_customer("carol")

    first = carol.SearchMyItems(crm.SearchMyItemsRequest(query="lamp", page_size=2))
    second = carol.SearchMyItems(crm.SearchMyItemsRequest(query="lamp", page_size=2, page_token=first.next_page_token))

    assert [item.id for item in [*first.items, *second.items]] == ids


def test_a_page_token_of_another_customer_is_invalid_argument(as_customer, items_stub):
    for _ in range(2):
        create(items_stub, customer_id="bob")
    bobs_token = as_customer("bob").ListMyItems(crm.ListMyItemsRequest(page_size=1)).next_page_token

    error = rpc_error(as_customer("alice").ListMyItems, crm.ListMyItemsRequest(page_size=1, page_token=bobs_token))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


def test_a_forged_page_token_whose_total_passes_int32_is_invalid_argument(as_customer, items_stub):
    for _ in range(2):
        create(items_stub, customer_id="alice")
    token = as_customer("alice").ListMyItems(crm.ListMyItemsRequest(page_size=1)).next_page_token

    error = rpc_error(
        as_customer("alice").ListMyItems,
        crm.ListMyItemsRequest(page_size=1, page_token=page_token_with_total(token, 2**31)),
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


@pytest.mark.parametrize(
    ("call", "request_message", "field"),
    [
        ("ListMyItems", crm.ListMyItemsRequest(page_size=-1), "page_size"),
        ("SearchMyItems", crm.SearchMyItemsRequest(query="q" * 101), "query"),
        ("GetMyItem", crm.GetMyItemRequest(id=0), "id"),
    ],
)
def test_invalid_fields_are_invalid_argument_naming_them(as_customer_any_db, call, request_message, field):
    error = rpc_error(getattr(as_customer_any_db("alice"), call), request_message)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == [field]
    assert error_reason(error)[:2] == ("INVALID_FIELDS", "crm.v1")


# --- authentication on the CRM ---------------------------------------------------------


def test_crm_call_without_token_is_unauthenticated(crm_address_any_db):
    with grpc.insecure_channel(crm_address_any_db) as channel:
        error = rpc_error(crm_pb2_grpc.CustomerItemsServiceStub(channel).ListMyItems, crm.ListMyItemsRequest())

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == ("TOKEN_MISSING", "crm.v1", {})


def test_crm_refuses_an_expired_customer_token(crm_address_any_db):
    with authorized_channel(crm_address_any_db, mint(subject="alice", roles=("customer",), lifetime_s=-120)) as channel:
        error = rpc_error(crm_pb2_grpc.CustomerItemsServiceStub(channel).ListMyItems, crm.ListMyItemsRequest())

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "token has expired"
    assert error_reason(error) == ("TOKEN_EXPIRED", "crm.v1", {})


def test_crm_refuses_a_token_without_the_customer_role(as_customer_any_db):
    error = rpc_error(as_customer_any_db("ops", roles=("inventory.read",)).ListMyItems, crm.ListMyItemsRequest())

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == ("PERMISSION_DENIED", "crm.v1", {"required_role": "customer"})


@pytest.mark.parametrize("subject", ["c" * 101, "alice\x00"])
def test_crm_refuses_a_customer_token_whose_subject_no_item_could_name(as_customer_any_db, subject):
    stub = as_customer_any_db(subject)

    for call, request in (
        (stub.ListMyItems, crm.ListMyItemsRequest()),
        (stub.GetMyItem, crm.GetMyItemRequest(id=1)),
        (stub.SearchMyItems, crm.SearchMyItemsRequest(query="key")),
    ):
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error.details() == "this token's subject is not a customer id"
        assert error_reason(error) == ("NOT_A_CUSTOMER", "crm.v1", {})
