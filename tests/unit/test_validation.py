"""Every rule a request must keep, checked where the servicer checks it (convert, then the
service) with storage that fails the test if a call reaches it: each case names the field
and the reason the client reads in its BadRequest. How such an error looks on the wire is
shown once, in tests/e2e/test_item_service.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import field_mask_pb2

from inventory.v1 import inventory_pb2 as pb
from inventory_svc.convert import changes_from_update, item_fields_from_proto, query_from_request, reason_from_proto
from inventory_svc.service import ItemService
from servicekit.errors import FieldViolation, InvalidField
from tests.helpers import money, new_item, usd


def refuse_storage(**_: object) -> Any:
    raise AssertionError("a request that breaks a rule reached storage")


@pytest.fixture
def service() -> ItemService:
    return ItemService(refuse_storage)


def invalid_field(call: Callable[..., object], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """The field and description of the one violation of the InvalidField that `call` raises."""
    with pytest.raises(InvalidField) as raised:
        call(*args, **kwargs)
    (violation,) = raised.value.field_violations
    return violation.field, violation.description


def test_create_item_breaking_three_rules_names_all_three_fields_at_once(service):
    item = new_item(sku="", name="", quantity=-1)

    with pytest.raises(InvalidField) as raised:
        service.create_item(item_fields_from_proto(item))

    assert raised.value.field_violations == (
        FieldViolation("item.sku", "is required"),
        FieldViolation("item.name", "is required"),
        FieldViolation("item.quantity", "must be zero or more"),
    )
    assert str(raised.value) == (
        "invalid item.sku: is required; invalid item.name: is required; invalid item.quantity: must be zero or more"
    )


def test_a_listing_with_two_bad_filters_names_both(service):
    request = pb.ListItemsRequest(category="c" * 101, brand="b" * 101)

    with pytest.raises(InvalidField) as raised:
        service.list_items(query_from_request(request), 10, "")

    assert [violation.field for violation in raised.value.field_violations] == ["category", "brand"]


# --- CreateItem ---------------------------------------------------------------------------


def too_long(limit: int, length: int) -> str:
    return f"must be at most {limit} characters, got {length}"


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"sku": ""}, "item.sku", "is required"),
        ({"sku": "x" * 101}, "item.sku", too_long(100, 101)),
        ({"sku": " padded "}, "item.sku", "must not start or end with white space"),
        ({"name": ""}, "item.name", "is required"),
        ({"name": "n" * 256}, "item.name", too_long(255, 256)),
        ({"name": "bad\x00name"}, "item.name", "must not contain NUL characters"),
        ({"description": "d" * 4001}, "item.description", too_long(4000, 4001)),
        ({"category": "c" * 101}, "item.category", too_long(100, 101)),
        ({"brand": "b" * 101}, "item.brand", too_long(100, 101)),
        ({"dimensions": "d" * 101}, "item.dimensions", too_long(100, 101)),
        ({"customer_id": "c" * 101}, "item.customer_id", too_long(100, 101)),
        ({"price": usd(0)}, "item.price", "must be greater than zero"),
        ({"price": usd(-1)}, "item.price", "must be greater than zero"),
        ({"price": usd(1, -5)}, "item.price", "nanos must be within ±999,999,999 and share the sign of units"),
        (
            {"price": usd(0, 1_000_000_000)},
            "item.price",
            "nanos must be within ±999,999,999 and share the sign of units",
        ),
        (
            {"price": money("usd", 1)},
            "item.price.currency_code",
            "must be a three-letter ISO 4217 code such as USD",
        ),
        ({"cost": usd(-1)}, "item.cost", "must be zero or more"),
        ({"cost": money("EUR", 1)}, "item.cost.currency_code", "must be empty or the price's currency"),
        ({"quantity": -1}, "item.quantity", "must be zero or more"),
        ({"low_stock_threshold": -1}, "item.low_stock_threshold", "must be zero or more"),
        (
            {"low_stock_threshold": 5, "max_quantity": 5},
            "item.max_quantity",
            "must be greater than low_stock_threshold",
        ),
        ({"weight_kg": -0.5}, "item.weight_kg", "must be a finite number, zero or more"),
        ({"weight_kg": float("nan")}, "item.weight_kg", "must be a finite number, zero or more"),
    ],
)
def test_create_item_breaking_a_rule_names_the_field_and_stores_nothing(service, fields, field, reason):
    item = new_item(**fields)

    assert invalid_field(lambda: service.create_item(item_fields_from_proto(item))) == (field, reason)


def test_create_item_without_price_names_the_price():
    item = new_item()
    item.ClearField("price")

    assert invalid_field(item_fields_from_proto, item) == ("item.price", "is required")


def test_a_request_id_that_is_not_a_uuid_is_refused_before_storage(service):
    assert invalid_field(service.create_item, item_fields_from_proto(new_item()), request_id="retry-1") == (
        "request_id",
        "must be a UUID such as 3f2b6c1e-8d4a-4e0b-9c57-2a1d5e7f9b10",
    )


# --- reads --------------------------------------------------------------------------------


def test_get_item_without_id_names_the_id(service):
    assert invalid_field(service.get_item, 0) == ("id", "must be greater than zero")


@pytest.mark.parametrize(
    ("request_fields", "field", "reason"),
    [
        ({"page_size": -1}, "page_size", "must be zero or more"),
        ({"query": "q" * 101}, "query", too_long(100, 101)),
        ({"query": "a\x00"}, "query", "must not contain NUL characters"),
        ({"category": "\x00"}, "category", "must not contain NUL characters"),
    ],
)
def test_list_items_breaking_a_rule_names_the_field(service, request_fields, field, reason):
    request = pb.ListItemsRequest(**request_fields)

    assert invalid_field(service.list_items, query_from_request(request), request.page_size, "") == (field, reason)


def test_list_customer_items_without_customer_names_it(service):
    assert invalid_field(service.list_customer_items, "", False, 0, "") == ("customer_id", "is required")


def test_list_low_stock_items_with_negative_threshold_names_it(service):
    assert invalid_field(service.list_low_stock_items, -1, 0, "") == ("threshold", "must be zero or more")


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ([], "must name 1 to 100 items"),
        (list(range(1, 102)), "must name 1 to 100 items"),
        ([1, 0], "must all be greater than zero"),
    ],
)
def test_batch_get_items_needs_1_to_100_valid_ids(service, ids, reason):
    assert invalid_field(service.batch_get_items, ids) == ("ids", reason)


def test_a_watch_from_a_negative_cursor_names_it(service):
    assert invalid_field(service.watches.open, "", "", -1) == ("after_cursor", "must be zero or more")


# --- UpdateItem, DeleteItem ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("id", "id cannot be changed"),
        ("create_time", "create_time cannot be changed"),
        ("update_time", "update_time cannot be changed"),
        ("etag", "etag cannot be changed"),
        ("colour", "colour is not a field of Item that can be updated"),
        ("price.units", "price.units is not a field of Item that can be updated"),
    ],
)
def test_update_item_with_immutable_or_unknown_mask_path_names_the_mask(path, reason):
    mask = field_mask_pb2.FieldMask(paths=[path])

    assert invalid_field(changes_from_update, pb.Item(id=1, sku="CHANGED"), mask) == ("update_mask", reason)


@pytest.mark.parametrize("etag", ["99999999999999999999", "9" * 5000, "-1", "1e3"])
def test_an_etag_never_issued_is_refused_before_storage(service, etag):
    assert invalid_field(service.delete_item, 1, etag) == ("etag", "is not an etag issued by this service")
    assert invalid_field(service.update_item, 1, {"name": "x"}, etag) == (
        "item.etag",
        "is not an etag issued by this service",
    )


# --- AdjustQuantity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({}, "change", "set exactly one of delta or set_quantity"),
        ({"delta": 0}, "delta", "must not be zero"),
        ({"set_to": -1}, "set_quantity", "must be zero or more"),
        ({"delta": 1, "note": "n" * 501}, "note", too_long(500, 501)),
        (
            {"delta": 1, "reason": reason_from_proto(pb.STOCK_MOVEMENT_REASON_ITEM_CREATED)},
            "reason",
            "is recorded by the server itself: use RESTOCK, SALE, RETURN, CORRECTION, DAMAGE or OTHER",
        ),
    ],
)
def test_adjust_quantity_breaking_a_rule_names_the_field_and_changes_nothing(service, change, field, reason):
    assert invalid_field(service.adjust_quantity, 1, **change) == (field, reason)


def test_a_reason_outside_the_enum_names_the_reason():
    assert invalid_field(reason_from_proto, 42) == ("reason", "42 is not a StockMovementReason")
