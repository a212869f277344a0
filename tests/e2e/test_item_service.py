"""inventory.v1.ItemService over a real channel to a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2

from inventory.v1 import inventory_pb2 as pb
from inventory_svc.domain import ItemFields, Money
from inventory_svc.storage import SqlUnitOfWork
from tests.helpers import (
    all_pages,
    bad_request_fields,
    create,
    error_reason,
    money,
    new_item,
    page_token_with_total,
    precondition_subjects,
    rpc_error,
    usd,
)


def get(stub, item_id: int) -> pb.Item:
    return stub.GetItem(pb.GetItemRequest(id=item_id)).item


def total_items(stub) -> int:
    return stub.ListItems(pb.ListItemsRequest()).total_size


# --- CreateItem -------------------------------------------------------------------------


def test_create_item_assigns_id_timestamps_and_etag(items_stub):
    created = create(items_stub, sku="KB-1", name="Keyboard", price=usd(19, 990_000_000))

    assert created.id > 0
    assert created.create_time.seconds > 0
    assert created.update_time == created.create_time
    assert created.etag
    assert get(items_stub, created.id) == created


def test_create_item_keeps_every_field_exactly(items_stub):
    sent = new_item(
        sku="FULL-1",
        name="Full",
        description="all fields",
        category="tools",
        brand="Acme",
        price=usd(1234, 560_000_001),
        cost=usd(0, 1),
        quantity=7,
        low_stock_threshold=3,
        max_quantity=40,
        is_active=False,
        weight_kg=1.25,
        dimensions="1 x 2 x 3 cm",
        customer_id="cust-9",
    )
    created = items_stub.CreateItem(pb.CreateItemRequest(item=sent)).item

    for field in (
        "sku",
        "name",
        "description",
        "category",
        "brand",
        "price",
        "quantity",
        "low_stock_threshold",
        "max_quantity",
        "is_active",
        "weight_kg",
        "dimensions",
        "customer_id",
    ):
        assert getattr(created, field) == getattr(sent, field), field
    assert created.cost == usd(0, 1)


def test_create_item_is_active_unless_told_otherwise(items_stub):
    assert create(items_stub).is_active is True


def test_create_item_with_taken_sku_is_already_exists_and_keeps_the_first(items_stub):
    first = create(items_stub, sku="DUP-1", name="first")

    error = rpc_error(items_stub.CreateItem, pb.CreateItemRequest(item=new_item(sku="DUP-1", name="second")))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(error) == ("SKU_TAKEN", "inventory.v1", {"sku": "DUP-1"})
    assert total_items(items_stub) == 1
    assert get(items_stub, first.id).name == "first"


def test_create_item_breaking_a_rule_is_invalid_argument_naming_the_field_and_stores_nothing(items_stub):
    # Every rule, with the field and reason it names, is in tests/unit/test_validation.py.
    error = rpc_error(items_stub.CreateItem, pb.CreateItemRequest(item=new_item(sku="")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["item.sku"]
    assert error_reason(error) == ("INVALID_FIELDS", "inventory.v1", {})
    assert total_items(items_stub) == 0


def test_create_item_breaking_three_rules_names_all_three_fields_in_one_answer(items_stub):
    error = rpc_error(items_stub.CreateItem, pb.CreateItemRequest(item=new_item(sku="", name="", quantity=-1)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["item.sku", "item.name", "item.quantity"]
    assert error.details().startswith("invalid item.sku: is required; invalid item.name")
    assert total_items(items_stub) == 0


# --- GetItem ----------------------------------------------------------------------------


def test_get_unknown_item_is_not_found(items_stub):
    error = rpc_error(items_stub.GetItem, pb.GetItemRequest(id=424242))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "424242" in error.details()
    assert error_reason(error) == ("ITEM_NOT_FOUND", "inventory.v1", {"item_id": "424242"})


# --- ListItems --------------------------------------------------------------------------


@pytest.fixture
def catalog(items_stub) -> dict[str, pb.Item]:
    specs = [
        dict(
            sku="A-1",
            name="Blue Widget",
            category="widgets",
            brand="Acme",
            price=usd(5),
            quantity=0,
            low_stock_threshold=2,
            customer_id="alice",
        ),
        dict(
            sku="A-2",
            name="Red widget",
            category="widgets",
            brand="Bolt",
            price=usd(15),
            quantity=3,
            low_stock_threshold=3,
            customer_id="alice",
        ),
        dict(
            sku="B-1",
            name="Gadget 100%",
            category="gadgets",
            brand="Acme",
            price=usd(25),
            quantity=50,
            low_stock_threshold=5,
            customer_id="bob",
        ),
        dict(
            sku="B_2",
            name="Gizmo",
            category="gadgets",
            brand="Cogs",
            price=usd(35, 500_000_000),
            quantity=8,
            low_stock_threshold=10,
            customer_id="bob",
            is_active=False,
        ),
        dict(
            sku="C-1",
            name="Thing",
            category="misc",
            brand="acmeware",
            price=usd(45),
            quantity=100,
            low_stock_threshold=1,
        ),
    ]
    return {spec["sku"]: create(items_stub, **spec) for spec in specs}


def listed_skus(stub, **filters) -> list[str]:
    return [item.sku for item in stub.ListItems(pb.ListItemsRequest(**filters)).items]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["A-1", "A-2", "B-1", "B_2", "C-1"]),
        ({"category": "widgets"}, ["A-1", "A-2"]),
        ({"brand": "Acme"}, ["A-1", "B-1"]),
        ({"customer_id": "bob"}, ["B-1", "B_2"]),
        ({"is_active": False}, ["B_2"]),
        ({"is_active": True}, ["A-1", "A-2", "B-1", "C-1"]),
        ({"name_contains": "WIDGET"}, ["A-1", "A-2"]),
        ({"query": "acme"}, ["A-1", "B-1", "C-1"]),
        ({"query": "gadg"}, ["B-1", "B_2"]),
        ({"query": "b-"}, ["B-1"]),
        ({"min_price": usd(15), "max_price": usd(35, 500_000_000)}, ["A-2", "B-1", "B_2"]),
        ({"max_price": usd(35)}, ["A-1", "A-2", "B-1"]),
        ({"min_price": money("EUR", 1)}, []),
        ({"min_quantity": 8, "max_quantity": 50}, ["B-1", "B_2"]),
        ({"in_stock_only": True}, ["A-2", "B-1", "B_2", "C-1"]),
        ({"low_stock_only": True}, ["A-1", "A-2"]),  # B_2 is low but inactive
        ({"category": "gadgets", "is_active": True, "in_stock_only": True}, ["B-1"]),
    ],
)
def test_list_items_applies_every_filter(items_stub, catalog, filters, expected):
    response = items_stub.ListItems(pb.ListItemsRequest(**filters))

    assert [item.sku for item in response.items] == expected
    assert response.total_size == len(expected)


@pytest.mark.parametrize(("query", "expected"), [("%", ["B-1"]), ("_", ["B_2"]), ("0%", ["B-1"])])
def test_list_items_query_takes_percent_and_underscore_literally(items_stub, catalog, query, expected):
    assert listed_skus(items_stub, query=query) == expected


def test_a_text_search_over_several_pages_counts_every_match_on_each(items_stub):
    lamps = [create(items_stub, name=f"Desk lamp {n}").id for n in range(5)]
    create(items_stub, name="Chair")

    pages = all_pages(
        lambda token: items_stub.ListItems(pb.ListItemsRequest(query="LAMP", page_size=2, page_token=token))
    )
    nothing = items_stub.ListItems(pb.ListItemsRequest(query="sofa", page_size=2))

    assert [item.id for page in pages for item in page.items] == lamps
    assert [page.total_size for page in pages] == [5, 5, 5]
    assert (list(nothing.items), nothing.total_size, nothing.next_page_token) == ([], 0, "")


def test_list_items_pages_follow_id_order_with_tokens(items_stub):
    created = [create(items_stub).id for _ in range(7)]

    pages = all_pages(lambda token: items_stub.ListItems(pb.ListItemsRequest(page_size=3, page_token=token)))

    assert [item.id for page in pages for item in page.items] == created
    assert [page.total_size for page in pages] == [7, 7, 7]


def test_paging_never_skips_or_repeats_while_items_are_inserted(items_stub):
    before = [create(items_stub).id for _ in range(10)]

    def read_page_then_insert(token: str) -> pb.ListItemsResponse:
        page = items_stub.ListItems(pb.ListItemsRequest(page_size=3, page_token=token))
        create(items_stub)  # a concurrent writer adds an item between every two pages
        return page

    seen = [item.id for page in all_pages(read_page_then_insert) for item in page.items]

    assert len(seen) == len(set(seen))
    assert seen[: len(before)] == before


def test_list_items_without_page_size_returns_fifty(item_service, items_stub):
    for number in range(51):
        item_service.create_item(_fields(f"P-{number}"))

    response = items_stub.ListItems(pb.ListItemsRequest())

    assert len(response.items) == 50
    assert response.next_page_token


def test_list_items_clamps_page_size_to_five_hundred(item_service, items_stub):
    for number in range(501):
        item_service.create_item(_fields(f"P-{number}"))

    response = items_stub.ListItems(pb.ListItemsRequest(page_size=10_000))

    assert len(response.items) == 500
    assert response.total_size == 501


def test_later_pages_repeat_the_total_counted_on_the_first(items_stub):
    for _ in range(3):
        create(items_stub)
    first = items_stub.ListItems(pb.ListItemsRequest(page_size=2))
    create(items_stub)

    second = items_stub.ListItems(pb.ListItemsRequest(page_size=2, page_token=first.next_page_token))

    assert (first.total_size, second.total_size) == (3, 3)
    assert len(second.items) == 2  # the new item is on the page all the same
    assert items_stub.ListItems(pb.ListItemsRequest(page_size=2)).total_size == 4


def _fields(sku: str) -> ItemFields:
    return ItemFields(sku=sku, name=sku, price=Money("USD", 1_000_000_000))


def _first_page_token(stub, **filters) -> str:
    for _ in range(3):
        create(stub, category="widgets")
    token = stub.ListItems(pb.ListItemsRequest(page_size=1, **filters)).next_page_token
    assert token
    return token


def test_page_token_whose_total_passes_int32_is_invalid_argument(items_stub):
    # Sealed with a valid checksum (the checksum is unkeyed): only the total is out of range.
    forged = page_token_with_total(_first_page_token(items_stub), 2**31)

    error = rpc_error(items_stub.ListItems, pb.ListItemsRequest(page_size=1, page_token=forged))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


def test_tampered_page_token_is_invalid_argument(items_stub):
    token = _first_page_token(items_stub)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")

    error = rpc_error(items_stub.ListItems, pb.ListItemsRequest(page_size=1, page_token=tampered))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


def test_page_token_of_another_query_is_invalid_argument(items_stub):
    token = _first_page_token(items_stub, category="widgets")

    error = rpc_error(items_stub.ListItems, pb.ListItemsRequest(page_size=1, page_token=token, category="gadgets"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


def test_garbage_page_token_is_invalid_argument(items_stub):
    error = rpc_error(items_stub.ListItems, pb.ListItemsRequest(page_token="not a token!"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["page_token"]


# --- UpdateItem -------------------------------------------------------------------------


def update(stub, item: pb.Item, *paths: str) -> pb.Item:
    request = pb.UpdateItemRequest(item=item, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))
    return stub.UpdateItem(request).item


def test_update_item_changes_only_the_masked_fields(items_stub):
    created = create(items_stub, name="old", description="kept", price=usd(10))

    updated = update(
        items_stub, pb.Item(id=created.id, name="new", description="ignored", price=usd(12)), "name", "price"
    )

    assert (updated.name, updated.price, updated.description) == ("new", usd(12), "kept")
    assert updated.etag != created.etag
    assert updated.update_time.ToDatetime() > created.update_time.ToDatetime()
    assert updated.create_time == created.create_time
    assert get(items_stub, created.id) == updated


def test_update_item_with_empty_mask_changes_the_fields_that_are_set(items_stub):
    created = create(items_stub, name="old", brand="Acme", quantity=4)

    updated = update(items_stub, pb.Item(id=created.id, name="new", category="tools"))

    assert (updated.name, updated.category, updated.brand, updated.quantity) == ("new", "tools", "Acme", 4)


def test_update_item_can_clear_an_optional_field(items_stub):
    created = create(items_stub, max_quantity=50, weight_kg=2.0, cost=usd(3))

    updated = update(items_stub, pb.Item(id=created.id), "max_quantity", "weight_kg", "cost")

    assert not updated.HasField("max_quantity")
    assert not updated.HasField("weight_kg")
    assert not updated.HasField("cost")


def test_update_item_with_current_etag_succeeds(items_stub):
    created = create(items_stub)

    updated = update(items_stub, pb.Item(id=created.id, name="renamed", etag=created.etag), "name")

    assert updated.name == "renamed"


def test_update_item_with_stale_etag_is_aborted_and_changes_nothing(items_stub):
    created = create(items_stub, name="original")
    update(items_stub, pb.Item(id=created.id, name="first"), "name")

    error = rpc_error(update, items_stub, pb.Item(id=created.id, name="second", etag=created.etag), "name")

    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error)[:2] == ("ETAG_MISMATCH", "inventory.v1")
    assert precondition_subjects(error) == [("ETAG", f"items/{created.id}")]
    assert get(items_stub, created.id).name == "first"


def test_update_item_to_a_taken_sku_is_already_exists(items_stub):
    create(items_stub, sku="TAKEN")
    other = create(items_stub, sku="MINE")

    error = rpc_error(update, items_stub, pb.Item(id=other.id, sku="TAKEN"), "sku")

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert get(items_stub, other.id).sku == "MINE"


def test_update_item_with_invalid_value_is_invalid_argument_and_changes_nothing(items_stub):
    created = create(items_stub, low_stock_threshold=2)

    error = rpc_error(update, items_stub, pb.Item(id=created.id, max_quantity=1), "max_quantity")

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["item.max_quantity"]
    assert get(items_stub, created.id) == created


def test_update_unknown_item_is_not_found(items_stub):
    error = rpc_error(update, items_stub, pb.Item(id=999_999, name="x"), "name")

    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- DeleteItem -------------------------------------------------------------------------


def test_delete_item_removes_it(items_stub):
    created = create(items_stub)

    items_stub.DeleteItem(pb.DeleteItemRequest(id=created.id))

    assert rpc_error(items_stub.GetItem, pb.GetItemRequest(id=created.id)).code() == grpc.StatusCode.NOT_FOUND


def test_delete_unknown_item_is_not_found(items_stub):
    error = rpc_error(items_stub.DeleteItem, pb.DeleteItemRequest(id=31337))

    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_delete_item_with_stale_etag_is_aborted_and_keeps_it(items_stub):
    created = create(items_stub)
    update(items_stub, pb.Item(id=created.id, name="changed"), "name")

    error = rpc_error(items_stub.DeleteItem, pb.DeleteItemRequest(id=created.id, etag=created.etag))

    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reason(error)[:2] == ("ETAG_MISMATCH", "inventory.v1")
    assert get(items_stub, created.id).name == "changed"


# --- ListCustomerItems ------------------------------------------------------------------


def test_list_customer_items_lists_only_that_customers_active_items(items_stub, catalog):
    response = items_stub.ListCustomerItems(pb.ListCustomerItemsRequest(customer_id="bob"))

    assert [item.sku for item in response.items] == ["B-1"]
    assert response.total_size == 1


def test_list_customer_items_includes_inactive_when_asked(items_stub, catalog):
    response = items_stub.ListCustomerItems(pb.ListCustomerItemsRequest(customer_id="bob", include_inactive=True))

    assert [item.sku for item in response.items] == ["B-1", "B_2"]


def test_list_customer_items_pages(items_stub):
    ids = [create(items_stub, customer_id="carol").id for _ in range(5)]
    create(items_stub, customer_id="dave")

    first = items_stub.ListCustomerItems(pb.ListCustomerItemsRequest(customer_id="carol", page_size=3))
    second = items_stub.ListCustomerItems(
        pb.ListCustomerItemsRequest(customer_id="carol", page_size=3, page_token=first.next_page_token)
    )

    assert [item.id for item in [*first.items, *second.items]] == ids
    assert second.next_page_token == ""


# --- AdjustQuantity ---------------------------------------------------------------------


def adjust(stub, item_id: int, **change) -> pb.Item:
    return stub.AdjustQuantity(pb.AdjustQuantityRequest(id=item_id, **change)).item


def test_adjust_quantity_adds_a_signed_delta(items_stub):
    created = create(items_stub, quantity=10)

    assert adjust(items_stub, created.id, delta=5).quantity == 15
    assert adjust(items_stub, created.id, delta=-15).quantity == 0
    assert get(items_stub, created.id).quantity == 0


def test_adjust_quantity_sets_an_absolute_quantity(items_stub):
    created = create(items_stub, quantity=10)

    adjusted = adjust(items_stub, created.id, set_quantity=3)

    assert adjusted.quantity == 3
    assert adjusted.etag != created.etag


def test_adjust_quantity_below_zero_is_failed_precondition_and_changes_nothing(items_stub):
    created = create(items_stub, quantity=2)

    error = rpc_error(adjust, items_stub, created.id, delta=-3)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == ("STOCK_WOULD_GO_NEGATIVE", "inventory.v1", {"item_id": str(created.id)})
    assert precondition_subjects(error) == [("STOCK", f"items/{created.id}")]
    assert get(items_stub, created.id) == created


def test_adjust_quantity_of_unknown_item_is_not_found(items_stub):
    assert rpc_error(adjust, items_stub, 777_777, delta=1).code() == grpc.StatusCode.NOT_FOUND


def test_adjust_quantity_past_int32_is_failed_precondition(items_stub):
    created = create(items_stub, quantity=2**31 - 2)

    error = rpc_error(adjust, items_stub, created.id, delta=5)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error)[0] == "STOCK_WOULD_OVERFLOW"
    assert precondition_subjects(error) == [("STOCK", f"items/{created.id}")]
    assert get(items_stub, created.id).quantity == 2**31 - 2


def test_concurrent_decrements_never_lose_an_update_nor_go_negative(items_stub):
    """200 concurrent decrements on 150 units: exactly 150 succeed and the stock ends at 0."""
    created = create(items_stub, quantity=150)

    def decrement(_: int) -> grpc.StatusCode:
        try:
            items_stub.AdjustQuantity(pb.AdjustQuantityRequest(id=created.id, delta=-1))
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(decrement, range(200)))

    assert outcomes.count(grpc.StatusCode.OK) == 150
    assert outcomes.count(grpc.StatusCode.FAILED_PRECONDITION) == 50
    final = get(items_stub, created.id)
    assert final.quantity == 0
    assert int(final.etag) == int(created.etag) + 150


# --- ListLowStockItems ------------------------------------------------------------------


def test_list_low_stock_items_uses_each_items_own_threshold_and_skips_inactive(items_stub, catalog):
    response = items_stub.ListLowStockItems(pb.ListLowStockItemsRequest())

    assert [item.sku for item in response.items] == ["A-1", "A-2"]
    assert response.total_size == 2


def test_list_low_stock_items_with_threshold_uses_it_instead(items_stub, catalog):
    response = items_stub.ListLowStockItems(pb.ListLowStockItemsRequest(threshold=50))

    assert [item.sku for item in response.items] == ["A-1", "A-2", "B-1"]


def test_paging_never_skips_an_item_whose_transaction_commits_late(engine, items_stub):
    """A create whose transaction commits after a later create must not land behind a reader."""
    held_open, release = threading.Event(), threading.Event()

    def slow_create() -> None:
        with SqlUnitOfWork(engine, for_write=True) as uow:
            uow.items.add(_fields("SLOW"))
            held_open.set()
            release.wait(10)
            uow.commit()

    slow = threading.Thread(target=slow_create)
    slow.start()
    assert held_open.wait(10)
    with ThreadPoolExecutor(max_workers=1) as pool:
        fast = pool.submit(create, items_stub, sku="FAST")
        time.sleep(0.5)  # the fast create runs meanwhile, as far as the database lets it
        seen, token = [], ""
        while True:
            page = items_stub.ListItems(pb.ListItemsRequest(page_size=1, page_token=token))
            seen += [item.sku for item in page.items]
            token = page.next_page_token or token
            if not page.next_page_token:
                break
        release.set()
        slow.join()
        fast.result(timeout=10)

    while True:
        page = items_stub.ListItems(pb.ListItemsRequest(page_size=1, page_token=token))
        seen += [item.sku for item in page.items]
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert sorted(seen) == ["FAST", "SLOW"]


def test_text_search_folds_case_beyond_ascii(items_stub):
    create(items_stub, sku="FR-1", name="Chaise École")
    create(items_stub, sku="DE-1", name="GRÜNER Tee")

    assert listed_skus(items_stub, query="école") == ["FR-1"]
    assert listed_skus(items_stub, name_contains="grüner") == ["DE-1"]


@pytest.mark.parametrize("path", ["x" * 10_000, "é" * 1_000, "一" * 1_000])
def test_a_long_update_mask_path_is_invalid_argument_not_an_oversized_answer(items_stub, path):
    # Echoed back whole, the path would make trailers past the 8 KiB a client accepts: it
    # would see RESOURCE_EXHAUSTED instead of what was wrong.
    item = create(items_stub)

    error = rpc_error(
        items_stub.UpdateItem, pb.UpdateItemRequest(item=pb.Item(id=item.id), update_mask={"paths": [path]})
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["update_mask"]
