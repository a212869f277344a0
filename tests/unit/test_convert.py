"""Protobuf <-> domain translation, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.type import money_pb2

from inventory.v1 import inventory_pb2 as pb
from inventory_svc.convert import (
    changes_from_update,
    item_to_proto,
    money_from_proto,
    money_to_proto,
    timestamp_to_proto,
)
from inventory_svc.domain import Item, Money
from servicekit.errors import InvalidField


@pytest.mark.parametrize(
    ("units", "nanos", "total"),
    [(0, 0, 0), (19, 990_000_000, 19_990_000_000), (-2, -500_000_000, -2_500_000_000), (0, 1, 1)],
)
def test_money_round_trips_exactly(units, nanos, total):
    message = money_pb2.Money(currency_code="USD", units=units, nanos=nanos)

    money = money_from_proto(message, "price")

    assert money == Money("USD", total)
    assert money_to_proto(money) == message


@pytest.mark.parametrize(("units", "nanos"), [(1, -1), (-1, 1), (0, 1_000_000_000), (2**62, 0)])
def test_money_out_of_range_names_the_field(units, nanos):
    with pytest.raises(InvalidField) as raised:
        money_from_proto(money_pb2.Money(currency_code="USD", units=units, nanos=nanos), "min_price")
    assert raised.value.field == "min_price"


def test_update_with_empty_mask_takes_the_fields_that_are_set():
    changes = changes_from_update(pb.Item(id=3, name="new", quantity=4, etag="7"), field_mask_pb2.FieldMask())

    assert changes == {"name": "new", "quantity": 4}


def test_update_with_star_mask_takes_every_mutable_field():
    item = pb.Item(sku="S", name="N", price=money_pb2.Money(currency_code="USD", units=1))

    changes = changes_from_update(item, field_mask_pb2.FieldMask(paths=["*"]))

    assert changes["sku"] == "S"
    assert changes["max_quantity"] is None
    assert changes["is_active"] is False
    assert len(changes) == 14


def test_update_of_nothing_is_refused():
    with pytest.raises(InvalidField) as raised:
        changes_from_update(pb.Item(id=3), field_mask_pb2.FieldMask())
    assert raised.value.field == "update_mask"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 25, 8, 40, 12, 345678, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: seconds round down
        datetime(2026, 11, 25, 9, 40, 0, 1, tzinfo=timezone(timedelta(hours=1))),
    ],
)
def test_timestamps_convert_as_protobufs_own_conversion_does(moment):
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)

    assert timestamp_to_proto(moment) == expected


def test_an_item_becomes_its_message_field_by_field():
    created, updated = (
        datetime(2026, 11, 1, 9, 30, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 2, tzinfo=UTC),
    )
    item = Item(
        sku="A-1",
        name="Lamp",
        price=Money("EUR", 19_990_000_000),
        description="warm",
        category="lights",
        brand="Lumo",
        cost=Money("EUR", 7_500_000_000),
        quantity=4,
        low_stock_threshold=2,
        max_quantity=20,
        is_active=False,
        weight_kg=1.25,
        dimensions="20x20x40 cm",
        customer_id="alice",
        id=7,
        create_time=created,
        update_time=updated,
        version=3,
        reserved_quantity=1,
    )

    assert item_to_proto(item) == pb.Item(
        id=7,
        sku="A-1",
        name="Lamp",
        description="warm",
        category="lights",
        brand="Lumo",
        price=money_pb2.Money(currency_code="EUR", units=19, nanos=990_000_000),
        cost=money_pb2.Money(currency_code="EUR", units=7, nanos=500_000_000),
        quantity=4,
        low_stock_threshold=2,
        max_quantity=20,
        is_active=False,
        weight_kg=1.25,
        dimensions="20x20x40 cm",
        customer_id="alice",
        create_time=timestamp_pb2.Timestamp(seconds=int(created.timestamp()), nanos=123456000),
        update_time=timestamp_pb2.Timestamp(seconds=int(updated.timestamp())),
        etag="3",
        reserved_quantity=1,
        available_quantity=3,
    )


def test_an_items_unset_optional_fields_stay_unset_in_its_message():
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    message = item_to_proto(
        Item(sku="B-2", name="Bare", price=Money("USD", 1), id=8, create_time=moment, update_time=moment)
    )

    assert [name for name in ("cost", "max_quantity", "weight_kg") if message.HasField(name)] == []
