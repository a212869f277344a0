"""Stock that can be trusted: idempotent retries, the movement ledger, batch reads."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.server import build_item_service
from inventory_svc.settings import InventorySettings
from servicekit.server_settings import ServerSettings
from tests.helpers import (
    TEST_AUTH,
    age_request_ids,
    authorized_channel,
    bad_request_fields,
    create,
    mint,
    new_item,
    rpc_error,
    serving,
)

REASON = pb.StockMovementReason


def movements(stub, item_id: int, page_size: int = 500) -> list[pb.StockMovement]:
    return list(stub.ListStockMovements(pb.ListStockMovementsRequest(item_id=item_id, page_size=page_size)).movements)


def adjust(stub, item_id: int, **fields) -> pb.Item:
    return stub.AdjustQuantity(pb.AdjustQuantityRequest(id=item_id, **fields)).item


# --- idempotent mutations (AIP-155) ----------------------------------------------------


def test_create_item_replayed_with_its_request_id_returns_the_first_item_and_creates_one(items_stub):
    request = pb.CreateItemRequest(item=new_item(sku="IDEM-1"), request_id=str(uuid.uuid4()))

    first = items_stub.CreateItem(request).item
    again = items_stub.CreateItem(request).item

    assert again == first
    assert items_stub.ListItems(pb.ListItemsRequest()).total_size == 1
    assert len(movements(items_stub, first.id)) == 1


def test_adjust_quantity_replayed_with_its_request_id_changes_stock_once(items_stub):
    item = create(items_stub, quantity=10)
    request = pb.AdjustQuantityRequest(id=item.id, delta=-3, request_id=str(uuid.uuid4()))

    first = items_stub.AdjustQuantity(request).item
    again = items_stub.AdjustQuantity(request).item

    assert first.quantity == again.quantity == 7
    assert again == first
    assert items_stub.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 7


def test_concurrent_replays_of_one_request_id_change_stock_once(items_stub):
    item = create(items_stub, quantity=100)
    request = pb.AdjustQuantityRequest(id=item.id, delta=-1, request_id=str(uuid.uuid4()))

    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda _: items_stub.AdjustQuantity(request).item, range(40)))

    assert {reply.quantity for reply in replies} == {99}
    assert items_stub.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 99
    assert [m.delta for m in movements(items_stub, item.id)] == [-1, 100]


@pytest.mark.parametrize(
    "second",
    [
        pb.AdjustQuantityRequest(delta=-2),
        pb.AdjustQuantityRequest(set_quantity=1),
        pb.AdjustQuantityRequest(delta=-1, reason=REASON.STOCK_MOVEMENT_REASON_SALE),
    ],
)
def test_a_request_id_reused_for_another_request_is_invalid_argument(items_stub, second):
    item = create(items_stub, quantity=10)
    request_id = str(uuid.uuid4())
    adjust(items_stub, item.id, delta=-1, request_id=request_id)
    second.id, second.request_id = item.id, request_id

    error = rpc_error(items_stub.AdjustQuantity, second)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(error) == ["request_id"]
    assert items_stub.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 9


def test_a_request_id_of_a_create_cannot_be_reused_to_adjust(items_stub):
    request_id = str(uuid.uuid4())
    item = items_stub.CreateItem(pb.CreateItemRequest(item=new_item(), request_id=request_id)).item

    error = rpc_error(adjust, items_stub, item.id, delta=1, request_id=request_id)

    assert bad_request_fields(error) == ["request_id"]


def test_a_request_id_in_another_spelling_of_the_same_uuid_is_a_replay(items_stub):
    item = create(items_stub, quantity=10)
    request_id = uuid.uuid4()
    spellings = [str(request_id), str(request_id).upper(), request_id.hex, f"{{{request_id}}}", request_id.urn]

    replies = [adjust(items_stub, item.id, delta=-1, request_id=spelling) for spelling in spellings]

    assert {reply.quantity for reply in replies} == {9}
    assert items_stub.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 9
    assert movements(items_stub, item.id)[0].request_id == str(request_id)


def test_request_ids_expire_after_their_time_and_are_purged(engine, empty_database):
    ttl_s = 3600
    settings = InventorySettings(server=ServerSettings(), auth=TEST_AUTH, request_id_ttl_s=ttl_s)
    with serving(settings, engine) as running, authorized_channel(f"127.0.0.1:{running.port}", mint()) as channel:
        stub = inventory_pb2_grpc.ItemServiceStub(channel)
        item = create(stub, quantity=10)
        request = pb.AdjustQuantityRequest(id=item.id, delta=-1, request_id=str(uuid.uuid4()))
        stub.AdjustQuantity(request)
        age_request_ids(engine, ttl_s - 60)

        assert stub.AdjustQuantity(request).item.quantity == 9  # within its time: a replay
        age_request_ids(engine, 120)

        assert stub.AdjustQuantity(request).item.quantity == 8  # an expired key is a new request
        purger = build_item_service(engine, settings)
        assert purger.purge_expired_request_ids() == 0  # claimed again just now
        age_request_ids(engine, ttl_s + 60)

        assert purger.purge_expired_request_ids() == 1


# --- the movement ledger ---------------------------------------------------------------


def test_every_change_of_stock_is_in_the_ledger_with_reason_and_principal(inventory_address):
    with authorized_channel(inventory_address, mint(subject="clerk-7")) as channel:
        stub = inventory_pb2_grpc.ItemServiceStub(channel)
        item = create(stub, quantity=5, low_stock_threshold=1)
        request_id = str(uuid.uuid4())
        adjust(
            stub, item.id, delta=10, reason=REASON.STOCK_MOVEMENT_REASON_RESTOCK, note="PO 4711", request_id=request_id
        )
        adjust(stub, item.id, delta=-2, reason=REASON.STOCK_MOVEMENT_REASON_SALE)
        adjust(stub, item.id, set_quantity=12)
        adjust(stub, item.id, delta=-1)
        stub.UpdateItem(
            pb.UpdateItemRequest(
                item=pb.Item(id=item.id, quantity=20), update_mask=field_mask_pb2.FieldMask(paths=["quantity"])
            )
        )
        stub.UpdateItem(
            pb.UpdateItemRequest(
                item=pb.Item(id=item.id, name="renamed"), update_mask=field_mask_pb2.FieldMask(paths=["name"])
            )
        )
        stub.DeleteItem(pb.DeleteItemRequest(id=item.id))

        ledger = movements(stub, item.id)

    assert [(m.delta, m.quantity_after, REASON.Name(m.reason)) for m in ledger] == [
        (-20, 0, "STOCK_MOVEMENT_REASON_ITEM_DELETED"),
        (9, 20, "STOCK_MOVEMENT_REASON_ITEM_UPDATED"),
        (-1, 11, "STOCK_MOVEMENT_REASON_OTHER"),
        (-1, 12, "STOCK_MOVEMENT_REASON_CORRECTION"),
        (-2, 13, "STOCK_MOVEMENT_REASON_SALE"),
        (10, 15, "STOCK_MOVEMENT_REASON_RESTOCK"),
        (5, 5, "STOCK_MOVEMENT_REASON_ITEM_CREATED"),
    ]
    assert {m.principal for m in ledger} == {"clerk-7"}
    restock = ledger[-2]
    assert (restock.note, restock.request_id) == ("PO 4711", request_id)
    assert [m.id for m in ledger] == sorted((m.id for m in ledger), reverse=True)


def test_stock_movements_page_newest_first(items_stub):
    item = create(items_stub, quantity=1)
    for _ in range(4):
        adjust(items_stub, item.id, delta=1)

    first = items_stub.ListStockMovements(pb.ListStockMovementsRequest(item_id=item.id, page_size=3))
    second = items_stub.ListStockMovements(
        pb.ListStockMovementsRequest(item_id=item.id, page_size=3, page_token=first.next_page_token)
    )

    assert [m.quantity_after for m in [*first.movements, *second.movements]] == [5, 4, 3, 2, 1]
    assert second.next_page_token == ""


def test_stock_movements_of_an_unknown_item_are_not_found(items_stub):
    error = rpc_error(items_stub.ListStockMovements, pb.ListStockMovementsRequest(item_id=987654))

    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_ledger_and_items_agree_after_200_concurrent_adjustments(items_stub):
    """The sum of an item's deltas equals its quantity, however the changes interleave."""
    items = [create(items_stub, quantity=20) for _ in range(3)]
    plan = [(random.choice(items).id, random.choice([-3, -1, 1, 2])) for _ in range(200)]

    def change(step):
        item_id, delta = step
        try:
            adjust(items_stub, item_id, delta=delta)
            return True
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return False

    with ThreadPoolExecutor(max_workers=32) as pool:
        applied = list(pool.map(change, plan))

    for item in items:
        ledger = movements(items_stub, item.id)
        quantity = items_stub.GetItem(pb.GetItemRequest(id=item.id)).item.quantity
        assert sum(m.delta for m in ledger) == quantity >= 0
        assert ledger[0].quantity_after == quantity
        expected_changes = sum(ok for ok, (item_id, _) in zip(applied, plan, strict=True) if item_id == item.id)
        assert len(ledger) == 1 + expected_changes


# --- BatchGetItems ---------------------------------------------------------------------


def test_batch_get_items_keeps_the_order_asked(items_stub):
    ids = [create(items_stub).id for _ in range(3)]
    asked = [ids[2], ids[0], ids[2], ids[1]]

    reply = items_stub.BatchGetItems(pb.BatchGetItemsRequest(ids=asked))

    assert [item.id for item in reply.items] == asked


def test_batch_get_items_with_an_unknown_id_is_not_found_naming_it(items_stub):
    known = create(items_stub).id

    error = rpc_error(items_stub.BatchGetItems, pb.BatchGetItemsRequest(ids=[known, 555_555]))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "items not found: 555555"
