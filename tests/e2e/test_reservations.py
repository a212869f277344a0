"""Reservations and batches of stock changes over a real server, on SQLite and PostgreSQL:
all or nothing, replays by request_id, expiry, available quantity, and every step in the
ledger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from google.protobuf import duration_pb2

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from tests.helpers import (
    all_pages,
    authorized_channel,
    bad_request_fields,
    create,
    error_reason,
    eventually,
    mint,
    precondition_subjects,
    rpc_error,
    serving,
)

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
def reservations(inventory_address: str) -> Iterator[inventory_pb2_grpc.ReservationServiceStub]:
    with authorized_channel(inventory_address, mint()) as channel:
        yield inventory_pb2_grpc.ReservationServiceStub(channel)


def lines(*pairs: tuple[int, int]) -> list[pb.ReservationLine]:
    return [pb.ReservationLine(item_id=item_id, quantity=quantity) for item_id, quantity in pairs]


def reserve(stub, *pairs: tuple[int, int], ttl_s: float | None = None, **fields) -> pb.Reservation:
    request = pb.ReserveStockRequest(lines=lines(*pairs), **fields)
    if ttl_s is not None:
        request.ttl.FromNanoseconds(int(ttl_s * 1e9))
    return stub.ReserveStock(request).reservation


def get(items_stub, item_id: int) -> pb.Item:
    return items_stub.GetItem(pb.GetItemRequest(id=item_id)).item


def movements(items_stub, item_id: int) -> list[pb.StockMovement]:
    pages = all_pages(
        lambda token: items_stub.ListStockMovements(
            pb.ListStockMovementsRequest(item_id=item_id, page_size=500, page_token=token)
        )
    )
    return [movement for page in pages for movement in page.movements]


def assert_ledger_adds_up(items_stub, item_id: int) -> None:
    item, rows = get(items_stub, item_id), movements(items_stub, item_id)
    assert sum(row.delta for row in rows) == item.quantity
    assert sum(row.reserved_delta for row in rows) == item.reserved_quantity
    assert item.available_quantity == item.quantity - item.reserved_quantity >= 0


def test_a_reservation_holds_units_of_every_line_and_the_ledger_says_so(items_stub, reservations):
    lamp, desk = create(items_stub, quantity=10), create(items_stub, quantity=4)

    reservation = reserve(reservations, (lamp.id, 3), (desk.id, 4), reference="cart-1", ttl_s=60)

    assert reservation.state == pb.RESERVATION_STATE_ACTIVE
    assert [(line.item_id, line.quantity) for line in reservation.lines] == [(lamp.id, 3), (desk.id, 4)]
    assert (reservation.reference, reservation.principal) == ("cart-1", "tester")
    assert reservation.expire_time.ToSeconds() - reservation.create_time.ToSeconds() == 60
    held = get(items_stub, lamp.id)
    assert (held.quantity, held.reserved_quantity, held.available_quantity) == (10, 3, 7)
    step = movements(items_stub, lamp.id)[0]
    assert (step.reason, step.delta, step.reserved_delta, step.reserved_after, step.reservation_id) == (
        pb.STOCK_MOVEMENT_REASON_RESERVED,
        0,
        3,
        3,
        reservation.id,
    )
    assert step.principal == "tester"
    for item in (lamp, desk):
        assert_ledger_adds_up(items_stub, item.id)


def test_the_default_ttl_is_fifteen_minutes(items_stub, reservations):
    item = create(items_stub, quantity=1)

    reservation = reserve(reservations, (item.id, 1))

    assert reservation.expire_time.ToSeconds() - reservation.create_time.ToSeconds() == 15 * 60


def test_a_short_line_reserves_nothing_and_names_each_short_item_with_what_it_has(items_stub, reservations):
    plenty, scarce, empty = (
        create(items_stub, quantity=50),
        create(items_stub, quantity=2),
        create(items_stub, quantity=0),
    )

    error = rpc_error(reserve, reservations, (plenty.id, 5), (scarce.id, 3), (empty.id, 1))

    assert error.code() == FAILED_PRECONDITION
    reason, _, metadata = error_reason(error)
    assert (reason, metadata) == ("INSUFFICIENT_STOCK", {"item_ids": f"{scarce.id},{empty.id}"})
    assert precondition_subjects(error) == [("STOCK", f"items/{scarce.id}"), ("STOCK", f"items/{empty.id}")]
    assert f"item {scarce.id} has 2 of 3" in error.details()
    assert get(items_stub, plenty.id).reserved_quantity == 0  # the line that fitted was not held either
    assert [m.reason for m in movements(items_stub, plenty.id)] == [pb.STOCK_MOVEMENT_REASON_ITEM_CREATED]
    listed = reservations.ListReservations(pb.ListReservationsRequest(item_id=plenty.id))
    assert list(listed.reservations) == []


def test_reserving_an_unknown_item_is_not_found_naming_it(items_stub, reservations):
    item = create(items_stub, quantity=5)

    error = rpc_error(reserve, reservations, (item.id, 1), (10**9, 1))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error)[0::2] == ("ITEM_NOT_FOUND", {"item_ids": str(10**9)})
    assert get(items_stub, item.id).reserved_quantity == 0


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "lines"),
        ({"lines": lines(*((n, 1) for n in range(1, 102)))}, "lines"),
        ({"lines": lines((0, 1))}, "lines[0].item_id"),
        ({"lines": lines((1, 0))}, "lines[0].quantity"),
        ({"lines": lines((1, 1), (1, 2))}, "lines[1].item_id"),
        ({"lines": lines((1, 1)), "ttl": duration_pb2.Duration(nanos=500_000_000)}, "ttl"),
        ({"lines": lines((1, 1)), "ttl": duration_pb2.Duration(seconds=24 * 3600 + 1)}, "ttl"),
        ({"lines": lines((1, 1)), "ttl": duration_pb2.Duration(seconds=24 * 3600, nanos=1)}, "ttl"),
        ({"lines": lines((1, 1)), "ttl": duration_pb2.Duration(seconds=-5)}, "ttl"),
        ({"lines": lines((1, 1)), "ttl": duration_pb2.Duration(seconds=10**15)}, "ttl"),
        ({"lines": lines((1, 1)), "reference": "r" * 101}, "reference"),
        ({"lines": lines((1, 1)), "request_id": "not-a-uuid"}, "request_id"),
    ],
)
def test_a_bad_reserve_request_is_invalid_naming_the_field(reservations, request_fields, field):
    error = rpc_error(reservations.ReserveStock, pb.ReserveStockRequest(**request_fields))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request_fields(error)


def test_confirm_sells_every_line_at_once(items_stub, reservations):
    lamp, desk = create(items_stub, quantity=10), create(items_stub, quantity=4)
    reservation = reserve(reservations, (lamp.id, 3), (desk.id, 4))

    confirmed = reservations.ConfirmReservation(pb.ConfirmReservationRequest(id=reservation.id)).reservation

    assert confirmed.state == pb.RESERVATION_STATE_CONFIRMED
    assert [(i.quantity, i.reserved_quantity) for i in (get(items_stub, lamp.id), get(items_stub, desk.id))] == [
        (7, 0),
        (0, 0),
    ]
    sale = movements(items_stub, desk.id)[0]
    assert (sale.reason, sale.delta, sale.reserved_delta, sale.reservation_id) == (
        pb.STOCK_MOVEMENT_REASON_SALE,
        -4,
        -4,
        reservation.id,
    )
    for item in (lamp, desk):
        assert_ledger_adds_up(items_stub, item.id)


def test_release_makes_the_units_available_again(items_stub, reservations):
    item = create(items_stub, quantity=5)
    reservation = reserve(reservations, (item.id, 5))

    released = reservations.ReleaseReservation(pb.ReleaseReservationRequest(id=reservation.id)).reservation

    assert released.state == pb.RESERVATION_STATE_RELEASED
    after = get(items_stub, item.id)
    assert (after.quantity, after.reserved_quantity, after.available_quantity) == (5, 0, 5)
    assert movements(items_stub, item.id)[0].reason == pb.STOCK_MOVEMENT_REASON_RESERVATION_RELEASED
    assert_ledger_adds_up(items_stub, item.id)


@pytest.mark.parametrize(
    ("first", "then", "state"),
    [
        ("ConfirmReservation", "ConfirmReservation", "CONFIRMED"),
        ("ConfirmReservation", "ReleaseReservation", "CONFIRMED"),
        ("ReleaseReservation", "ConfirmReservation", "RELEASED"),
        ("ReleaseReservation", "ReleaseReservation", "RELEASED"),
    ],
)
def test_a_reservation_no_longer_active_says_its_state(items_stub, reservations, first, then, state):
    item = create(items_stub, quantity=5)
    reservation = reserve(reservations, (item.id, 2))
    request_type = {
        "ConfirmReservation": pb.ConfirmReservationRequest,
        "ReleaseReservation": pb.ReleaseReservationRequest,
    }
    getattr(reservations, first)(request_type[first](id=reservation.id))
    before = get(items_stub, item.id)

    error = rpc_error(getattr(reservations, then), request_type[then](id=reservation.id))

    assert error.code() == FAILED_PRECONDITION
    assert error_reason(error)[0::2] == (
        "RESERVATION_NOT_ACTIVE",
        {"reservation_id": str(reservation.id), "state": state},
    )
    assert precondition_subjects(error) == [("STATE", f"reservations/{reservation.id}")]
    assert get(items_stub, item.id) == before


def test_an_unknown_reservation_is_not_found(reservations):
    for call, request in (
        (reservations.GetReservation, pb.GetReservationRequest(id=10**9)),
        (reservations.ConfirmReservation, pb.ConfirmReservationRequest(id=10**9)),
        (reservations.ReleaseReservation, pb.ReleaseReservationRequest(id=10**9)),
        (reservations.ExtendReservation, pb.ExtendReservationRequest(id=10**9, ttl=duration_pb2.Duration(seconds=9))),
    ):
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(error)[0] == "RESERVATION_NOT_FOUND"


def test_a_reservation_expires_on_its_own_and_its_units_come_back(items_stub, reservations):
    item = create(items_stub, quantity=3, low_stock_threshold=1)
    reservation = reserve(reservations, (item.id, 3), ttl_s=1)

    def expired() -> bool:
        found = reservations.GetReservation(pb.GetReservationRequest(id=reservation.id)).reservation
        return found.state == pb.RESERVATION_STATE_EXPIRED

    assert eventually(expired, 10)
    after = get(items_stub, item.id)
    assert (after.quantity, after.reserved_quantity) == (3, 0)
    expiry = [m for m in movements(items_stub, item.id) if m.reason == pb.STOCK_MOVEMENT_REASON_RESERVATION_EXPIRED]
    assert [(m.reserved_delta, m.reservation_id, m.principal) for m in expiry] == [(-3, reservation.id, "tester")]
    assert_ledger_adds_up(items_stub, item.id)


@pytest.fixture
def unswept_reservations(inventory_settings, empty_database) -> Iterator[inventory_pb2_grpc.ReservationServiceStub]:
    """A server whose sweep never comes: what a reservation past its time meets is the call's own doing."""
    settings = replace(inventory_settings, reservation_sweep_interval_s=3600.0)
    with (
        serving(settings, empty_database) as running,
        authorized_channel(f"127.0.0.1:{running.port}", mint()) as channel,
    ):
        yield inventory_pb2_grpc.ReservationServiceStub(channel)


@pytest.mark.parametrize("method", ["ConfirmReservation", "ReleaseReservation"])
def test_a_reservation_past_its_time_is_expired_by_the_call_and_sells_nothing(items_stub, unswept_reservations, method):
    item = create(items_stub, quantity=3)
    reservation = reserve(unswept_reservations, (item.id, 2), ttl_s=1)
    request_type = {
        "ConfirmReservation": pb.ConfirmReservationRequest,
        "ReleaseReservation": pb.ReleaseReservationRequest,
    }
    assert eventually(lambda: time.time() > reservation.expire_time.ToNanoseconds() / 1e9, 5)

    errors = [rpc_error(getattr(unswept_reservations, method), request_type[method](id=reservation.id)) for _ in "ab"]

    assert [(e.code(), error_reason(e)[2]["state"]) for e in errors] == [(FAILED_PRECONDITION, "EXPIRED")] * 2
    found = unswept_reservations.GetReservation(pb.GetReservationRequest(id=reservation.id)).reservation
    assert found.state == pb.RESERVATION_STATE_EXPIRED
    after = get(items_stub, item.id)
    assert (after.quantity, after.reserved_quantity) == (3, 0)
    reasons = [m.reason for m in movements(items_stub, item.id)]
    assert reasons.count(pb.STOCK_MOVEMENT_REASON_RESERVATION_EXPIRED) == 1
    assert pb.STOCK_MOVEMENT_REASON_SALE not in reasons


def test_extend_moves_the_expiry_while_active(items_stub, reservations):
    item = create(items_stub, quantity=3)
    reservation = reserve(reservations, (item.id, 1), ttl_s=60)

    extended = reservations.ExtendReservation(
        pb.ExtendReservationRequest(id=reservation.id, ttl=duration_pb2.Duration(seconds=3600))
    ).reservation

    assert extended.expire_time.ToSeconds() - extended.update_time.ToSeconds() == 3600
    assert reservations.GetReservation(pb.GetReservationRequest(id=reservation.id)).reservation == extended
    reservations.ReleaseReservation(pb.ReleaseReservationRequest(id=reservation.id))
    error = rpc_error(
        reservations.ExtendReservation,
        pb.ExtendReservationRequest(id=reservation.id, ttl=duration_pb2.Duration(seconds=9)),
    )
    assert (error.code(), error_reason(error)[2]["state"]) == (FAILED_PRECONDITION, "RELEASED")
    missing_ttl = rpc_error(reservations.ExtendReservation, pb.ExtendReservationRequest(id=reservation.id))
    assert bad_request_fields(missing_ttl) == ["ttl"]


# --- replays by request_id -------------------------------------------------------------------


def sent_concurrently(call, request, times: int = 16) -> list:
    """What each of `times` sends of one request answered, 8 at a time: a reply or an error."""

    def send(_: int):
        try:
            return call(request)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, range(times)))


def assert_one_answer(answers: list) -> None:
    """Every reply the same; a replay that arrived while the first was still writing may
    only have been told to try again."""
    replies = [answer for answer in answers if not isinstance(answer, grpc.RpcError)]
    refused = [answer for answer in answers if isinstance(answer, grpc.RpcError)]
    assert replies and all(reply == replies[0] for reply in replies)
    assert all(error_reason(error)[0] == "REQUEST_IN_PROGRESS" for error in refused)


def test_reserve_replayed_answers_the_first_reservation_and_holds_once(items_stub, reservations):
    item = create(items_stub, quantity=10)
    request_id = str(uuid.uuid4())

    first = reserve(reservations, (item.id, 4), request_id=request_id)
    reservations.ConfirmReservation(pb.ConfirmReservationRequest(id=first.id))
    again = reserve(reservations, (item.id, 4), request_id=request_id)

    assert again == first  # the first result, ACTIVE as it was then
    after = get(items_stub, item.id)
    assert (after.quantity, after.reserved_quantity) == (6, 0)


def test_a_request_id_reused_for_another_reservation_is_invalid(items_stub, reservations):
    item = create(items_stub, quantity=10)
    request_id = str(uuid.uuid4())
    reserve(reservations, (item.id, 1), request_id=request_id)

    error = rpc_error(reserve, reservations, (item.id, 2), request_id=request_id)

    assert (error.code(), error_reason(error)[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert get(items_stub, item.id).reserved_quantity == 1


@pytest.mark.parametrize("method", ["ConfirmReservation", "ReleaseReservation"])
def test_confirm_and_release_replayed_answer_the_first_result(items_stub, reservations, method):
    item = create(items_stub, quantity=10)
    reservation = reserve(reservations, (item.id, 4))
    request_type = {
        "ConfirmReservation": pb.ConfirmReservationRequest,
        "ReleaseReservation": pb.ReleaseReservationRequest,
    }
    request = request_type[method](id=reservation.id, request_id=str(uuid.uuid4()))

    first = getattr(reservations, method)(request).reservation
    again = getattr(reservations, method)(request).reservation

    assert again == first
    assert_ledger_adds_up(items_stub, item.id)
    assert len(movements(items_stub, item.id)) == 3  # created, reserved, and one end


@pytest.mark.parametrize("method", ["ReserveStock", "ConfirmReservation", "ReleaseReservation"])
def test_concurrent_replays_of_one_request_id_take_effect_once(items_stub, reservations, method):
    item = create(items_stub, quantity=100)
    request_id = str(uuid.uuid4())
    if method == "ReserveStock":
        request = pb.ReserveStockRequest(lines=lines((item.id, 7)), request_id=request_id)
    else:
        held = reserve(reservations, (item.id, 7))
        request_type = {
            "ConfirmReservation": pb.ConfirmReservationRequest,
            "ReleaseReservation": pb.ReleaseReservationRequest,
        }
        request = request_type[method](id=held.id, request_id=request_id)

    assert_one_answer(sent_concurrently(getattr(reservations, method), request))
    rows = movements(items_stub, item.id)
    steps = [row for row in rows if row.reason != pb.STOCK_MOVEMENT_REASON_ITEM_CREATED]
    assert len(steps) == (1 if method == "ReserveStock" else 2)
    assert_ledger_adds_up(items_stub, item.id)


# --- available quantity guards every other write ------------------------------------------


def test_adjust_quantity_below_the_reserved_units_is_refused(items_stub, reservations):
    item = create(items_stub, quantity=10)
    reserve(reservations, (item.id, 8))

    for change in ({"delta": -3}, {"set_quantity": 7}):
        error = rpc_error(items_stub.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, **change))
        assert error.code() == FAILED_PRECONDITION
        assert error_reason(error)[0::2] == (
            "STOCK_RESERVED",
            {"item_id": str(item.id), "reserved_quantity": "8"},
        )
    sold = items_stub.AdjustQuantity(pb.AdjustQuantityRequest(id=item.id, delta=-2)).item
    assert (sold.quantity, sold.reserved_quantity, sold.available_quantity) == (8, 8, 0)
    assert rpc_error(reserve, reservations, (item.id, 1)).code() == FAILED_PRECONDITION
    assert_ledger_adds_up(items_stub, item.id)


def test_going_below_zero_still_says_so_when_nothing_is_reserved(items_stub):
    item = create(items_stub, quantity=1)

    error = rpc_error(items_stub.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=-2))

    assert error_reason(error)[0] == "STOCK_WOULD_GO_NEGATIVE"


def test_update_item_cannot_take_the_quantity_below_the_reserved_units(items_stub, reservations):
    item = create(items_stub, quantity=10)
    reserve(reservations, (item.id, 6))
    current = get(items_stub, item.id)

    error = rpc_error(
        items_stub.UpdateItem,
        pb.UpdateItemRequest(item=pb.Item(id=item.id, quantity=5), update_mask={"paths": ["quantity"]}),
    )

    assert (error.code(), error_reason(error)[0]) == (FAILED_PRECONDITION, "STOCK_RESERVED")
    assert get(items_stub, item.id) == current
    for output_only in ("reserved_quantity", "available_quantity"):
        refused = rpc_error(
            items_stub.UpdateItem,
            pb.UpdateItemRequest(item=pb.Item(id=item.id), update_mask={"paths": [output_only]}),
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_item_with_reserved_units_cannot_be_deleted(items_stub, reservations):
    item = create(items_stub, quantity=10)
    reservation = reserve(reservations, (item.id, 1))

    error = rpc_error(items_stub.DeleteItem, pb.DeleteItemRequest(id=item.id))

    assert (error.code(), error_reason(error)[0]) == (FAILED_PRECONDITION, "ITEM_HAS_RESERVATIONS")
    reservations.ReleaseReservation(pb.ReleaseReservationRequest(id=reservation.id))
    items_stub.DeleteItem(pb.DeleteItemRequest(id=item.id))


def test_in_stock_and_low_stock_listings_count_what_is_available(items_stub, reservations):
    category = f"cat-{uuid.uuid4().hex[:8]}"
    item = create(items_stub, quantity=5, low_stock_threshold=2, category=category)
    reserve(reservations, (item.id, 5))

    in_stock = items_stub.ListItems(pb.ListItemsRequest(category=category, in_stock_only=True))
    low = items_stub.ListItems(pb.ListItemsRequest(category=category, low_stock_only=True))
    at_most_zero = items_stub.ListLowStockItems(pb.ListLowStockItemsRequest(threshold=0))

    assert list(in_stock.items) == []
    assert [found.id for found in low.items] == [item.id]
    assert item.id in [found.id for found in at_most_zero.items]


# --- low stock on available quantity ---------------------------------------------------------


def test_a_reservation_makes_an_item_low_and_a_release_makes_it_recover(items_stub, reservations):
    category = f"cat-{uuid.uuid4().hex[:8]}"
    item = create(items_stub, quantity=10, low_stock_threshold=3, category=category)
    watch = items_stub.WatchLowStock(pb.WatchLowStockRequest(category=category, after_cursor=0), timeout=20)

    reservation = reserve(reservations, (item.id, 8))
    reservations.ReleaseReservation(pb.ReleaseReservationRequest(id=reservation.id))

    low, recovered = next(watch), next(watch)
    watch.cancel()
    assert (low.kind, low.reason, low.quantity, low.available_quantity, low.reservation_id) == (
        pb.LOW_STOCK_EVENT_KIND_BECAME_LOW,
        pb.STOCK_MOVEMENT_REASON_RESERVED,
        10,
        2,
        reservation.id,
    )
    assert (recovered.kind, recovered.reason, recovered.available_quantity) == (
        pb.LOW_STOCK_EVENT_KIND_RECOVERED,
        pb.STOCK_MOVEMENT_REASON_RESERVATION_RELEASED,
        10,
    )


# --- listing --------------------------------------------------------------------------------


def test_list_reservations_filters_by_state_reference_and_item_in_pages(items_stub, reservations):
    first, second = create(items_stub, quantity=50), create(items_stub, quantity=50)
    reference = f"order-{uuid.uuid4().hex[:8]}"
    made = [reserve(reservations, (first.id, 1), (second.id, 1), reference=reference) for _ in range(5)]
    only_second = reserve(reservations, (second.id, 1), reference=reference)
    reservations.ConfirmReservation(pb.ConfirmReservationRequest(id=made[0].id))

    def listed(**filters) -> list[int]:
        pages = all_pages(
            lambda token: reservations.ListReservations(
                pb.ListReservationsRequest(page_size=2, page_token=token, **filters)
            )
        )
        return [reservation.id for page in pages for reservation in page.reservations]

    assert listed(reference=reference) == [r.id for r in [*made, only_second]]
    assert listed(reference=reference, state=pb.RESERVATION_STATE_ACTIVE) == [r.id for r in [*made[1:], only_second]]
    assert listed(item_id=first.id) == [r.id for r in made]
    assert listed(reference=reference, state=pb.RESERVATION_STATE_CONFIRMED) == [made[0].id]
    tampered = rpc_error(
        reservations.ListReservations, pb.ListReservationsRequest(reference="other", page_token="AAAA")
    )
    assert tampered.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown_state = rpc_error(reservations.ListReservations, pb.ListReservationsRequest(state=42))
    assert bad_request_fields(unknown_state) == ["state"]


# --- BatchAdjustQuantities -----------------------------------------------------------------


def change(item_id: int, **fields) -> pb.AdjustQuantityRequest:
    return pb.AdjustQuantityRequest(id=item_id, **fields)


def test_a_batch_applies_every_change_in_the_order_asked(items_stub):
    first, second, third = (create(items_stub, quantity=10) for _ in range(3))

    reply = items_stub.BatchAdjustQuantities(
        pb.BatchAdjustQuantitiesRequest(
            requests=[
                change(third.id, delta=5, reason=pb.STOCK_MOVEMENT_REASON_RESTOCK),
                change(first.id, set_quantity=2),
                change(second.id, delta=-10, note="sold out"),
            ]
        )
    )

    assert [(item.id, item.quantity) for item in reply.items] == [(third.id, 15), (first.id, 2), (second.id, 0)]
    assert movements(items_stub, second.id)[0].note == "sold out"
    assert movements(items_stub, first.id)[0].reason == pb.STOCK_MOVEMENT_REASON_CORRECTION
    for item in (first, second, third):
        assert_ledger_adds_up(items_stub, item.id)


def test_a_batch_with_one_failing_change_makes_none_and_names_it(items_stub, reservations):
    first, second = create(items_stub, quantity=10), create(items_stub, quantity=10)
    reserve(reservations, (second.id, 9))

    error = rpc_error(
        items_stub.BatchAdjustQuantities,
        pb.BatchAdjustQuantitiesRequest(requests=[change(first.id, delta=-1), change(second.id, delta=-2)]),
    )

    assert error.code() == FAILED_PRECONDITION
    assert error_reason(error)[0::2] == (
        "STOCK_RESERVED",
        {"item_id": str(second.id), "reserved_quantity": "9", "request_index": "1"},
    )
    assert get(items_stub, first.id).quantity == 10
    missing = rpc_error(
        items_stub.BatchAdjustQuantities,
        pb.BatchAdjustQuantitiesRequest(requests=[change(first.id, delta=-1), change(10**9, delta=1)]),
    )
    assert (missing.code(), error_reason(missing)[2]["request_index"]) == (grpc.StatusCode.NOT_FOUND, "1")
    assert get(items_stub, first.id).quantity == 10


def test_a_batch_replayed_by_request_id_changes_stock_once(items_stub):
    first, second = create(items_stub, quantity=10), create(items_stub, quantity=10)
    request = pb.BatchAdjustQuantitiesRequest(
        requests=[change(first.id, delta=-1), change(second.id, delta=3)], request_id=str(uuid.uuid4())
    )

    replies = [items_stub.BatchAdjustQuantities(request) for _ in range(3)]

    assert replies[0] == replies[1] == replies[2]
    assert (get(items_stub, first.id).quantity, get(items_stub, second.id).quantity) == (9, 13)
    reused = rpc_error(
        items_stub.BatchAdjustQuantities,
        pb.BatchAdjustQuantitiesRequest(requests=[change(first.id, delta=-2)], request_id=request.request_id),
    )
    assert error_reason(reused)[0] == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    ("requests", "fields"),
    [
        ([], ["requests"]),
        ([change(1, delta=1)] * 101, ["requests"]),
        ([change(1, delta=1), change(1, delta=2)], ["requests[1].id"]),
        ([change(1, delta=1, request_id=str(uuid.uuid4()))], ["requests[0].request_id"]),
        ([change(1), change(0, delta=0)], ["requests[0].change", "requests[1].id", "requests[1].delta"]),
        ([change(1, delta=1), change(2, delta=1, reason=42)], ["requests[1].reason"]),
        ([change(1, delta=1, reason=pb.STOCK_MOVEMENT_REASON_RESERVED)], ["requests[0].reason"]),
    ],
)
def test_a_bad_batch_is_invalid_naming_each_field(items_stub, requests, fields):
    error = rpc_error(items_stub.BatchAdjustQuantities, pb.BatchAdjustQuantitiesRequest(requests=requests))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(bad_request_fields(error)) == sorted(fields)


def test_concurrent_replays_of_a_batch_change_stock_once(items_stub):
    first, second = create(items_stub, quantity=10), create(items_stub, quantity=10)
    request = pb.BatchAdjustQuantitiesRequest(
        requests=[change(first.id, delta=-1), change(second.id, delta=3)], request_id=str(uuid.uuid4())
    )

    assert_one_answer(sent_concurrently(items_stub.BatchAdjustQuantities, request))
    assert (get(items_stub, first.id).quantity, get(items_stub, second.id).quantity) == (9, 13)


def test_a_request_breaking_a_rule_on_every_line_still_answers_its_own_status(reservations, items_stub):
    # 200 broken fields would not fit in the trailers a client accepts (8 KiB): it would see
    # RESOURCE_EXHAUSTED instead of what was wrong.
    reserve_error = rpc_error(reservations.ReserveStock, pb.ReserveStockRequest(lines=lines(*[(0, 0)] * 100)))
    batch_error = rpc_error(
        items_stub.BatchAdjustQuantities, pb.BatchAdjustQuantitiesRequest(requests=[change(10**15)] * 100)
    )

    for error in (reserve_error, batch_error):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(bad_request_fields(error)) == 20
        assert error.details().endswith(f"(the details name the first 20 of {199 if error is batch_error else 200})")
