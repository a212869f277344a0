"""The typed Python clients against a real server: every RPC of inventory.v1.ItemService
through both InventoryClient and AsyncInventoryClient, and of ReservationService through both
ReservationClient and AsyncReservationClient (each test runs with each), errors as servicekit
exceptions, and the CRM's client."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import re
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from typing import Any

import grpc
import pytest

from crm.v1 import crm_pb2
from crm_client import CrmClient
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_client import (
    AsyncInventoryClient,
    AsyncReservationClient,
    InventoryClient,
    ItemFilter,
    ReservationClient,
    money,
)
from servicekit.call_context import CallContext, current_call
from servicekit.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidField,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from tests.helpers import mint

ITEM_SERVICE = pb.DESCRIPTOR.services_by_name["ItemService"]
RESERVATION_SERVICE = pb.DESCRIPTOR.services_by_name["ReservationService"]
# Each synchronous client, its asyncio twin, and the service both call.
CLIENT_PAIRS = [
    (InventoryClient, AsyncInventoryClient, ITEM_SERVICE),
    (ReservationClient, AsyncReservationClient, RESERVATION_SERVICE),
]


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(
    ("client_class", "service"),
    [
        (InventoryClient, ITEM_SERVICE),
        (AsyncInventoryClient, ITEM_SERVICE),
        (ReservationClient, RESERVATION_SERVICE),
        (AsyncReservationClient, RESERVATION_SERVICE),
        (CrmClient, crm_pb2.DESCRIPTOR.services_by_name["CustomerItemsService"]),
    ],
)
def test_each_client_has_a_method_for_every_rpc_of_its_contract(client_class, service):
    missing = [
        method.name for method in service.methods if not callable(getattr(client_class, snake_case(method.name), None))
    ]

    assert missing == []


def parameters(client_class: type, name: str) -> list[inspect.Parameter]:
    return list(inspect.signature(getattr(client_class, name)).parameters.values())


@pytest.mark.parametrize(("sync_class", "async_class", "service"), CLIENT_PAIRS)
def test_the_asyncio_client_has_the_same_parameters_as_the_synchronous_one(sync_class, async_class, service):
    names = [snake_case(method.name) for method in service.methods]
    differing = [name for name in names if parameters(sync_class, name) != parameters(async_class, name)]

    assert differing == []


@pytest.mark.parametrize(("sync_class", "async_class", "service"), CLIENT_PAIRS)
def test_the_asyncio_clients_unary_methods_are_coroutines(sync_class, async_class, service):
    unary = [snake_case(method.name) for method in service.methods if not method.server_streaming]

    assert [name for name in unary if not inspect.iscoroutinefunction(getattr(async_class, name))] == []


class Blocking:
    """Drives an asyncio client from a synchronous test, on one event loop kept for the
    client's life (a grpc.aio channel belongs to the loop it was made on): the same test code
    then runs against both clients."""

    def __init__(self, client_class: Any, address: str, token: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = self._run(self._connect(client_class, address, token))

    @staticmethod
    async def _connect(client_class: Any, address: str, token: Any) -> Any:
        return client_class.connect(address, token)

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name == "watch_low_stock":
            return lambda **kwargs: self._iterate(method(**kwargs))
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def _iterate(self, events: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.close()


def connected(kind: str, address: str, token: Any) -> Any:
    return InventoryClient.connect(address, token) if kind == "sync" else Blocking(AsyncInventoryClient, address, token)


def connected_reservations(kind: str, address: str, token: Any) -> Any:
    if kind == "sync":
        return ReservationClient.connect(address, token)
    return Blocking(AsyncReservationClient, address, token)


@pytest.fixture(params=["sync", "asyncio"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def inventory(client_kind, inventory_address):
    client = connected(client_kind, inventory_address, mint)
    yield client
    client.close()


@pytest.fixture
def reservations(client_kind, inventory_address):
    client = connected_reservations(client_kind, inventory_address, mint)
    yield client
    client.close()


def widget(**overrides: Any) -> pb.Item:
    values = dict(
        sku="W-1",
        name="Widget",
        price=money("USD", "2.50"),
        quantity=3,
        low_stock_threshold=1,
        customer_id="alice",
        cost=money("USD", "1"),
        weight_kg=0.5,
        max_quantity=9,
    )
    values.update(overrides)
    return pb.Item(**values)


def test_create_item_returns_the_stored_item_and_get_item_reads_it(inventory):
    created = inventory.create_item(widget(), request_id="5a0e8f2c-0d3f-4a55-9d0e-1b1d3c2a7f01")

    assert (created.sku, created.price, created.cost, created.weight_kg) == (
        "W-1",
        money("USD", "2.5"),
        money("USD", "1"),
        0.5,
    )
    assert created.id > 0 and created.etag
    assert inventory.get_item(created.id) == created


def test_list_items_returns_the_items_matching_the_filter(inventory):
    lamp = inventory.create_item(widget(sku="L-1", name="Lamp", category="lights"))
    inventory.create_item(widget(sku="C-1", name="Chair", category="seats"))

    page = inventory.list_items(ItemFilter(category="lights", min_price=money("USD", "2")), page_size=10)

    assert ([item.id for item in page.items], page.total_size, page.next_page_token) == ([lamp.id], 1, "")


def test_list_items_pages_with_the_next_page_token(inventory):
    ids = [inventory.create_item(widget(sku=f"W-{n}")).id for n in range(3)]

    first = inventory.list_items(page_size=2)
    second = inventory.list_items(page_size=2, page_token=first.next_page_token)

    assert [item.id for item in [*first.items, *second.items]] == ids
    assert second.next_page_token == ""


def test_update_item_changes_and_clears_only_the_named_fields(inventory):
    created = inventory.create_item(widget())

    updated = inventory.update_item(created.id, {"name": "Gadget", "weight_kg": None}, etag=created.etag)

    assert (updated.name, updated.HasField("weight_kg"), updated.sku) == ("Gadget", False, "W-1")
    assert inventory.get_item(created.id) == updated


def test_delete_item_removes_it(inventory):
    created = inventory.create_item(widget())

    inventory.delete_item(created.id, etag=created.etag)

    with pytest.raises(NotFound):
        inventory.get_item(created.id)


def test_list_customer_items_lists_that_customers_active_items_unless_asked_for_all(inventory):
    own = inventory.create_item(widget())
    retired = inventory.create_item(widget(sku="W-2", is_active=False))
    inventory.create_item(widget(sku="W-3", customer_id="bob"))

    assert [item.id for item in inventory.list_customer_items("alice").items] == [own.id]
    assert [item.id for item in inventory.list_customer_items("alice", include_inactive=True).items] == [
        own.id,
        retired.id,
    ]


def test_adjust_quantity_adds_a_delta_or_sets_a_quantity(inventory):
    created = inventory.create_item(widget(quantity=3))

    assert inventory.adjust_quantity(created.id, delta=-2, reason=pb.STOCK_MOVEMENT_REASON_SALE).quantity == 1
    assert inventory.adjust_quantity(created.id, set_to=7).quantity == 7
    assert inventory.get_item(created.id).quantity == 7


def test_list_low_stock_items_uses_the_given_threshold(inventory):
    few = inventory.create_item(widget(quantity=2, low_stock_threshold=0))
    inventory.create_item(widget(sku="W-2", quantity=8, low_stock_threshold=0))

    assert [item.id for item in inventory.list_low_stock_items(threshold=5).items] == [few.id]


def test_batch_get_items_returns_the_items_in_the_order_asked(inventory):
    first = inventory.create_item(widget())
    second = inventory.create_item(widget(sku="W-2"))

    assert [item.id for item in inventory.batch_get_items([second.id, first.id])] == [second.id, first.id]


def test_list_stock_movements_lists_them_newest_first(inventory):
    created = inventory.create_item(widget(quantity=3))
    inventory.adjust_quantity(created.id, delta=-2, note="sold two")

    page = inventory.list_stock_movements(created.id, page_size=10)

    assert [(m.delta, m.note) for m in page.items] == [(-2, "sold two"), (3, "")]


def test_watch_low_stock_streams_events_from_the_cursor(inventory):
    created = inventory.create_item(widget(quantity=3, low_stock_threshold=1))
    inventory.adjust_quantity(created.id, delta=-2)
    inventory.adjust_quantity(created.id, set_to=7)

    events = inventory.watch_low_stock(customer_id="alice", after_cursor=0, timeout_s=10)
    seen = [(event.item_id, event.kind) for event in itertools.islice(events, 2)]
    events.close()

    assert seen == [(created.id, pb.LOW_STOCK_EVENT_KIND_BECAME_LOW), (created.id, pb.LOW_STOCK_EVENT_KIND_RECOVERED)]


def test_watch_low_stock_ends_with_deadline_exceeded_at_its_timeout(inventory):
    with pytest.raises(DeadlineExceeded):
        list(inventory.watch_low_stock(after_cursor=0, timeout_s=0.3))


def test_reserve_stock_holds_units_until_confirm_reservation_sells_them(inventory, reservations):
    keyboard = inventory.create_item(widget(sku="KB", quantity=5))
    mouse = inventory.create_item(widget(sku="MS", quantity=4))

    held = reservations.reserve_stock(
        {keyboard.id: 2, mouse.id: 1}, ttl=timedelta(minutes=5), reference="cart-7", request_id=str(uuid.uuid4())
    )
    during = inventory.batch_get_items([keyboard.id, mouse.id])
    confirmed = reservations.confirm_reservation(held.id)
    after = inventory.batch_get_items([keyboard.id, mouse.id])

    assert (held.state, held.reference) == (pb.RESERVATION_STATE_ACTIVE, "cart-7")
    assert [(line.item_id, line.quantity) for line in held.lines] == [(keyboard.id, 2), (mouse.id, 1)]
    assert held.expire_time.ToDatetime() - held.create_time.ToDatetime() == timedelta(minutes=5)
    assert [(item.quantity, item.reserved_quantity, item.available_quantity) for item in during] == [
        (5, 2, 3),
        (4, 1, 3),
    ]
    assert (confirmed.id, confirmed.state) == (held.id, pb.RESERVATION_STATE_CONFIRMED)
    assert [(item.quantity, item.reserved_quantity, item.available_quantity) for item in after] == [
        (3, 0, 3),
        (3, 0, 3),
    ]
    sale = inventory.list_stock_movements(keyboard.id).items[0]
    assert (sale.reason, sale.delta, sale.reserved_delta, sale.reservation_id) == (
        pb.STOCK_MOVEMENT_REASON_SALE,
        -2,
        -2,
        held.id,
    )


def test_a_short_line_is_insufficient_stock_naming_the_item_and_reserves_nothing(inventory, reservations):
    plenty = inventory.create_item(widget(sku="PL", quantity=9))
    scarce = inventory.create_item(widget(sku="SC", quantity=1))

    with pytest.raises(FailedPrecondition) as short:
        reservations.reserve_stock({plenty.id: 2, scarce.id: 3})

    assert (short.value.reason, short.value.domain, short.value.metadata) == (
        "INSUFFICIENT_STOCK",
        "inventory.v1",
        {"item_ids": str(scarce.id)},
    )
    assert [(v.type, v.subject, v.description) for v in short.value.precondition_violations] == [
        ("STOCK", f"items/{scarce.id}", "3 asked, 1 available")
    ]
    assert [item.reserved_quantity for item in inventory.batch_get_items([plenty.id, scarce.id])] == [0, 0]


def test_release_extend_get_and_list_reservations(inventory, reservations):
    item = inventory.create_item(widget(quantity=5))
    reference = f"cart-{uuid.uuid4()}"  # reservations outlive the items of earlier tests
    first = reservations.reserve_stock({item.id: 1}, ttl=60, reference=reference)
    second = reservations.reserve_stock({item.id: 2}, reference=reference)

    extended = reservations.extend_reservation(first.id, timedelta(hours=2))
    released = reservations.release_reservation(second.id, request_id=str(uuid.uuid4()))

    assert extended.expire_time.ToDatetime() - first.expire_time.ToDatetime() > timedelta(hours=1)
    assert reservations.get_reservation(first.id) == extended
    assert released.state == pb.RESERVATION_STATE_RELEASED
    assert inventory.get_item(item.id).reserved_quantity == 1
    assert [r.id for r in reservations.list_reservations(reference=reference).items] == [first.id, second.id]
    active = reservations.list_reservations(state=pb.RESERVATION_STATE_ACTIVE, reference=reference)
    assert [r.id for r in active.items] == [first.id]
    first_page = reservations.list_reservations(reference=reference, page_size=1)
    second_page = reservations.list_reservations(
        reference=reference, page_size=1, page_token=first_page.next_page_token
    )
    assert [r.id for r in [*first_page.items, *second_page.items]] == [first.id, second.id]
    assert second_page.next_page_token == ""


def test_a_reservation_no_longer_active_is_reservation_not_active_saying_its_state(inventory, reservations):
    item = inventory.create_item(widget(quantity=5))
    held = reservations.reserve_stock({item.id: 1})
    reservations.release_reservation(held.id)

    with pytest.raises(FailedPrecondition) as ended:
        reservations.confirm_reservation(held.id)
    with pytest.raises(NotFound) as missing:
        reservations.get_reservation(held.id + 1000)

    assert (ended.value.reason, ended.value.metadata) == (
        "RESERVATION_NOT_ACTIVE",
        {"reservation_id": str(held.id), "state": "RELEASED"},
    )
    assert [(v.type, v.subject) for v in ended.value.precondition_violations] == [("STATE", f"reservations/{held.id}")]
    assert missing.value.reason == "RESERVATION_NOT_FOUND"
    assert inventory.get_item(item.id).quantity == 5


def test_a_ttl_out_of_range_is_an_invalid_field(reservations):
    with pytest.raises(InvalidField) as invalid:
        reservations.reserve_stock({1: 1}, ttl=timedelta(hours=25))

    assert (invalid.value.reason, invalid.value.field) == ("INVALID_FIELDS", "ttl")


def test_a_second_item_with_the_same_sku_is_already_exists(inventory):
    inventory.create_item(widget())

    with pytest.raises(AlreadyExists):
        inventory.create_item(widget())
    assert inventory.list_items().total_size == 1


def test_an_invalid_field_is_named_in_the_error(inventory):
    with pytest.raises(InvalidField) as invalid:
        inventory.create_item(widget(name=""))

    assert invalid.value.field == "item.name"
    assert (invalid.value.reason, invalid.value.domain) == ("INVALID_FIELDS", "inventory.v1")


def test_an_item_with_three_broken_fields_names_all_three_at_once(inventory):
    with pytest.raises(InvalidField) as invalid:
        inventory.create_item(widget(sku="", name="", quantity=-1))

    assert invalid.value.field_violations == (
        FieldViolation("item.sku", "is required"),
        FieldViolation("item.name", "is required"),
        FieldViolation("item.quantity", "must be zero or more"),
    )
    assert inventory.list_items().total_size == 0


def test_a_missing_item_is_item_not_found_naming_it(inventory):
    with pytest.raises(NotFound) as missing:
        inventory.get_item(424242)
    with pytest.raises(NotFound) as batch:
        inventory.batch_get_items([424242, 424243])

    assert (missing.value.reason, missing.value.domain, missing.value.metadata) == (
        "ITEM_NOT_FOUND",
        "inventory.v1",
        {"item_id": "424242"},
    )
    assert (batch.value.reason, batch.value.metadata) == ("ITEM_NOT_FOUND", {"item_ids": "424242,424243"})


def test_a_taken_sku_is_sku_taken(inventory):
    inventory.create_item(widget())

    with pytest.raises(AlreadyExists) as taken:
        inventory.create_item(widget())

    assert (taken.value.reason, taken.value.metadata) == ("SKU_TAKEN", {"sku": "W-1"})


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"delta": -100}, "STOCK_WOULD_GO_NEGATIVE"), ({"delta": 2**31 - 1}, "STOCK_WOULD_OVERFLOW")],
)
def test_a_stock_change_out_of_range_names_its_reason_and_the_item(inventory, change, reason):
    created = inventory.create_item(widget(quantity=3))

    with pytest.raises(FailedPrecondition) as refused:
        inventory.adjust_quantity(created.id, **change)

    assert refused.value.reason == reason
    assert [(v.type, v.subject) for v in refused.value.precondition_violations] == [("STOCK", f"items/{created.id}")]
    assert inventory.get_item(created.id).quantity == 3


def test_a_stale_etag_is_etag_mismatch_naming_the_item(inventory):
    created = inventory.create_item(widget())

    with pytest.raises(Conflict) as stale:
        inventory.update_item(created.id, {"name": "x"}, etag="999")

    assert stale.value.reason == "ETAG_MISMATCH"
    assert [(v.type, v.subject) for v in stale.value.precondition_violations] == [("ETAG", f"items/{created.id}")]


def test_a_request_id_reused_for_another_change_is_request_id_reused(inventory):
    created = inventory.create_item(widget(quantity=3))
    request_id = "6b1f9d3e-2c4a-4e8b-9f0d-3a5c7e9b1d20"
    inventory.adjust_quantity(created.id, delta=1, request_id=request_id)

    with pytest.raises(InvalidField) as reused:
        inventory.adjust_quantity(created.id, delta=2, request_id=request_id)

    assert (reused.value.reason, reused.value.field) == ("REQUEST_ID_REUSED", "request_id")
    assert inventory.get_item(created.id).quantity == 4


def test_an_expired_token_is_token_expired(client_kind, inventory_address):
    expired = connected(client_kind, inventory_address, lambda: mint(lifetime_s=-120))
    try:
        with pytest.raises(Unauthenticated) as refused:
            expired.list_items()
        assert (refused.value.reason, refused.value.domain) == ("TOKEN_EXPIRED", "inventory.v1")
    finally:
        expired.close()


def test_stock_below_zero_is_failed_precondition_and_changes_nothing(inventory):
    created = inventory.create_item(widget(quantity=3))

    with pytest.raises(FailedPrecondition):
        inventory.adjust_quantity(created.id, delta=-100)
    assert inventory.get_item(created.id).quantity == 3


def test_an_update_with_a_stale_etag_is_conflict(inventory):
    created = inventory.create_item(widget())

    with pytest.raises(Conflict):
        inventory.update_item(created.id, {"name": "x"}, etag="999")
    assert inventory.get_item(created.id).name == "Widget"


def test_a_client_with_a_read_only_token_cannot_write(client_kind, inventory_address):
    reader = connected(client_kind, inventory_address, lambda: mint(roles=("inventory.read",)))
    try:
        with pytest.raises(PermissionDenied) as denied:
            reader.create_item(widget())
        assert (denied.value.reason, denied.value.metadata) == (
            "PERMISSION_DENIED",
            {"required_role": "inventory.write"},
        )
        assert reader.list_items().total_size == 0
    finally:
        reader.close()


class RecordingInventory(inventory_pb2_grpc.ItemServiceServicer):
    """Records what a call brings (metadata, deadline), which the real server keeps to itself."""

    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []
        self.time_remaining: float | None = None

        # AdjustQuantity answers the first calls as a stopping replica does (grpc/grpc#41785),
        # which a real server does only in the instant it stops.
        self.cancel_first = 0
        self.adjust_attempts = 0

    def GetItem(self, request, context):
        self.metadata = [(key, value) for key, value in context.invocation_metadata() if not key.startswith("grpc-")]
        self.time_remaining = context.time_remaining()
        return pb.GetItemResponse(item=pb.Item(id=request.id))

    def AdjustQuantity(self, request, context):
        self.adjust_attempts += 1
        if self.adjust_attempts <= self.cancel_first:
            context.abort(grpc.StatusCode.CANCELLED, "the server is stopping")
        return pb.AdjustQuantityResponse(item=pb.Item(id=request.id, quantity=request.delta))


@pytest.fixture
def recording_inventory():
    servicer = RecordingInventory()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_a_call_made_while_serving_one_carries_its_token_request_id_and_remaining_time(
    client_kind, recording_inventory
):
    address, servicer = recording_inventory
    client = connected(client_kind, address, lambda: "the-token")
    reset = current_call.set(CallContext(deadline=time.monotonic() + 3, request_id="req-7"))
    try:
        client.get_item(1)
    finally:
        current_call.reset(reset)
        client.close()

    assert [pair for pair in servicer.metadata if pair[0] in ("authorization", "x-request-id")] == [
        ("x-request-id", "req-7"),
        ("authorization", "Bearer the-token"),
    ]
    assert servicer.time_remaining is not None and servicer.time_remaining <= 3.1


def test_a_call_made_after_the_serving_calls_deadline_is_deadline_exceeded_unsent(client_kind, recording_inventory):
    address, servicer = recording_inventory
    client = connected(client_kind, address, lambda: "the-token")
    reset = current_call.set(CallContext(deadline=time.monotonic() - 1, request_id="late"))
    try:
        with pytest.raises(DeadlineExceeded):
            client.get_item(1)
    finally:
        current_call.reset(reset)
        client.close()

    assert servicer.metadata == []


def test_a_write_with_a_request_id_is_tried_again_when_a_stopping_server_cancels_it(client_kind, recording_inventory):
    address, servicer = recording_inventory
    servicer.cancel_first = 1
    client = connected(client_kind, address, lambda: "the-token")
    try:
        item = client.adjust_quantity(7, delta=3, request_id="6f1c1f1e-2c4b-4c8e-9d0a-3b5e2f7a9c11")
    finally:
        client.close()

    assert (item.id, item.quantity, servicer.adjust_attempts) == (7, 3, 2)


def test_a_write_without_a_request_id_is_not_tried_again(client_kind, recording_inventory):
    address, servicer = recording_inventory
    servicer.cancel_first = 1
    client = connected(client_kind, address, lambda: "the-token")
    try:
        with pytest.raises(Cancelled):
            client.adjust_quantity(7, delta=3)
    finally:
        client.close()

    assert servicer.adjust_attempts == 1


class FirstCallCancelled(inventory_pb2_grpc.ReservationServiceServicer):
    """Answers each method's first call as a stopping replica does (grpc/grpc#41785), which a
    real server does only in the instant it stops, and the calls after it with a reservation."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def _answer(self, method: str, context: grpc.ServicerContext) -> pb.Reservation:
        self.attempts[method] = self.attempts.get(method, 0) + 1
        if self.attempts[method] == 1:
            context.abort(grpc.StatusCode.CANCELLED, "the server is stopping")
        return pb.Reservation(id=7)

    def ReserveStock(self, request, context):
        return pb.ReserveStockResponse(reservation=self._answer("ReserveStock", context))

    def ConfirmReservation(self, request, context):
        return pb.ConfirmReservationResponse(reservation=self._answer("ConfirmReservation", context))

    def ReleaseReservation(self, request, context):
        return pb.ReleaseReservationResponse(reservation=self._answer("ReleaseReservation", context))

    def ExtendReservation(self, request, context):
        return pb.ExtendReservationResponse(reservation=self._answer("ExtendReservation", context))

    def GetReservation(self, request, context):
        return pb.GetReservationResponse(reservation=self._answer("GetReservation", context))


@pytest.fixture
def first_call_cancelled():
    servicer = FirstCallCancelled()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inventory_pb2_grpc.add_ReservationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


REQUEST_ID = "0f6a3c52-8d1e-4b7a-9c2f-5e4d3b2a1c07"


@pytest.mark.parametrize(
    ("method", "call"),
    [
        pytest.param(
            "ReserveStock", lambda client: client.reserve_stock({1: 1}, request_id=REQUEST_ID), id="ReserveStock"
        ),
        pytest.param(
            "ConfirmReservation",
            lambda client: client.confirm_reservation(7, request_id=REQUEST_ID),
            id="ConfirmReservation",
        ),
        pytest.param(
            "ReleaseReservation",
            lambda client: client.release_reservation(7, request_id=REQUEST_ID),
            id="ReleaseReservation",
        ),
        pytest.param("GetReservation", lambda client: client.get_reservation(7), id="GetReservation"),
    ],
)
def test_a_reservation_read_or_a_write_with_a_request_id_is_tried_again_when_a_stopping_server_cancels_it(
    client_kind, first_call_cancelled, method, call
):
    address, servicer = first_call_cancelled
    client = connected_reservations(client_kind, address, lambda: "the-token")
    try:
        reservation = call(client)
    finally:
        client.close()

    assert (reservation.id, servicer.attempts) == (7, {method: 2})


@pytest.mark.parametrize(
    ("method", "call"),
    [
        pytest.param("ReserveStock", lambda client: client.reserve_stock({1: 1}), id="ReserveStock"),
        pytest.param("ConfirmReservation", lambda client: client.confirm_reservation(7), id="ConfirmReservation"),
        pytest.param("ExtendReservation", lambda client: client.extend_reservation(7, 60), id="ExtendReservation"),
    ],
)
def test_a_reservation_write_without_a_request_id_is_not_tried_again(client_kind, first_call_cancelled, method, call):
    address, servicer = first_call_cancelled
    client = connected_reservations(client_kind, address, lambda: "the-token")
    try:
        with pytest.raises(Cancelled):
            call(client)
    finally:
        client.close()

    assert servicer.attempts == {method: 1}


def test_crm_client_reaches_exactly_the_customers_own_items(inventory_address, crm_address):
    with InventoryClient.connect(inventory_address, token=mint) as inventory:
        own = inventory.create_item(widget())
        other = inventory.create_item(widget(sku="W-9", customer_id="bob"))

    with CrmClient.connect(crm_address, token=lambda: mint(subject="alice", roles=("customer",))) as crm:
        assert [item.id for item in crm.list_my_items().items] == [own.id]
        assert crm.get_my_item(own.id).price == money("USD", "2.50")
        assert [item.sku for item in crm.search_my_items("w-", category="").items] == ["W-1"]
        with pytest.raises(NotFound) as hidden:
            crm.get_my_item(other.id)

    assert (hidden.value.reason, hidden.value.domain, hidden.value.metadata) == (
        "ITEM_NOT_FOUND",
        "crm.v1",
        {"item_id": str(other.id)},
    )
