"""WatchLowStock: events as stock falls and recovers, filters, resume by cursor, clean
ends, freed resources, and delivery across replicas on PostgreSQL."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import grpc

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.settings import InventorySettings
from inventory_svc.stock import LowStockChange, MovementReason, StockMovement
from inventory_svc.storage import SqlUnitOfWork
from servicekit.server_settings import ServerSettings
from tests.helpers import (
    TEST_AUTH,
    authorized_channel,
    create,
    migrate,
    migrated_engine,
    mint,
    rpc_error,
    service_env,
    service_process,
    serving,
)

BECAME_LOW = pb.LOW_STOCK_EVENT_KIND_BECAME_LOW
RECOVERED = pb.LOW_STOCK_EVENT_KIND_RECOVERED


class Watcher:
    """Reads a WatchLowStock stream in a thread, so that a test can wait for events."""

    def __init__(self, stub, request: pb.WatchLowStockRequest, timeout: float = 30) -> None:
        self.events: queue.Queue = queue.Queue()
        self.stream = stub.WatchLowStock(request, timeout=timeout)
        self.ended: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.put(event)
            self.ended.put(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            self.ended.put(error.code())

    def next(self, timeout: float = 5) -> pb.WatchLowStockResponse:
        return self.events.get(timeout=timeout)

    def end_status(self, timeout: float = 5) -> grpc.StatusCode:
        return self.ended.get(timeout=timeout)

    def delivered_before_ending(self, timeout: float = 5) -> bool:
        """True once an event came, False if the stream ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.events.empty():
                return True
            if not self.ended.empty():
                return False
            time.sleep(0.01)
        raise AssertionError(f"the watch neither delivered nor ended within {timeout} s")


def adjust(stub, item_id: int, delta: int) -> None:
    stub.AdjustQuantity(pb.AdjustQuantityRequest(id=item_id, delta=delta))


# The ledger is emptied before each test, so a watch from cursor 0 sees every event of the
# test however late the server starts it. (Without a cursor, a watch starts at whatever the
# ledger holds when the server gets to it, which a test would have to race.)
FROM_THE_START = pb.WatchLowStockRequest(after_cursor=0)


def test_a_watcher_sees_stock_fall_to_the_threshold_and_recover(items_stub):
    item = create(items_stub, quantity=5, low_stock_threshold=2, customer_id="alice", category="tools")
    watcher = Watcher(items_stub, FROM_THE_START)

    adjust(items_stub, item.id, -2)  # 3: not low yet
    adjust(items_stub, item.id, -1)  # 2: low
    low = watcher.next()
    adjust(items_stub, item.id, -1)  # 1: still low, no new event
    adjust(items_stub, item.id, +5)  # 6: recovered, while the stream is live
    adjust(items_stub, item.id, +1)  # 7: still recovered, no new event
    adjust(items_stub, item.id, -6)  # 1: low again, the event after the recovery

    recovered, low_again = watcher.next(), watcher.next()
    assert (low.kind, low.item_id, low.quantity, low.low_stock_threshold) == (BECAME_LOW, item.id, 2, 2)
    assert (low.sku, low.customer_id, low.category) == (item.sku, "alice", "tools")
    assert (recovered.kind, recovered.quantity) == (RECOVERED, 6)
    assert (low_again.kind, low_again.quantity) == (BECAME_LOW, 1)
    assert low.cursor < recovered.cursor < low_again.cursor
    watcher.stream.cancel()


def test_a_watch_without_a_cursor_starts_at_the_end_of_the_ledger(items_stub):
    create(items_stub, quantity=1, low_stock_threshold=2)  # low from the start: an event before the watch
    item = create(items_stub, quantity=5, low_stock_threshold=2)
    watcher = Watcher(items_stub, pb.WatchLowStockRequest())

    # The server takes the ledger's end when it gets to the call: change stock until the watch
    # is live, then the first event it sends must be a new one.
    deadline = time.monotonic() + 10
    while watcher.events.empty():
        assert time.monotonic() < deadline, "the watch sent nothing"
        adjust(items_stub, item.id, -3)  # 2: low
        adjust(items_stub, item.id, +3)  # 5: recovered
        time.sleep(0.05)

    assert watcher.next().item_id == item.id
    watcher.stream.cancel()


def test_a_watcher_for_one_customer_sees_only_that_customers_items(items_stub):
    alices = create(items_stub, quantity=3, low_stock_threshold=2, customer_id="alice")
    bobs = create(items_stub, quantity=3, low_stock_threshold=2, customer_id="bob")
    watcher = Watcher(items_stub, pb.WatchLowStockRequest(customer_id="bob", after_cursor=0))

    adjust(items_stub, alices.id, -1)
    adjust(items_stub, bobs.id, -1)
    adjust(items_stub, alices.id, +5)
    adjust(items_stub, bobs.id, +5)

    assert [(event.item_id, event.kind) for event in (watcher.next(), watcher.next())] == [
        (bobs.id, BECAME_LOW),
        (bobs.id, RECOVERED),
    ]
    watcher.stream.cancel()


def test_an_inactive_item_never_counts_as_low(items_stub):
    inactive = create(items_stub, quantity=3, low_stock_threshold=2, is_active=False)
    active = create(items_stub, quantity=3, low_stock_threshold=2)
    watcher = Watcher(items_stub, FROM_THE_START)

    adjust(items_stub, inactive.id, -3)
    adjust(items_stub, active.id, -1)  # proves the stream is live and in order
    adjust(items_stub, inactive.id, +5)
    adjust(items_stub, active.id, +5)

    assert [(event.item_id, event.kind) for event in (watcher.next(), watcher.next())] == [
        (active.id, BECAME_LOW),
        (active.id, RECOVERED),
    ]
    assert watcher.ended.empty()
    watcher.stream.cancel()


def test_deleting_a_low_item_ends_its_low_state(items_stub):
    item = create(items_stub, quantity=3, low_stock_threshold=2)
    watcher = Watcher(items_stub, FROM_THE_START)

    adjust(items_stub, item.id, -1)
    items_stub.DeleteItem(pb.DeleteItemRequest(id=item.id))

    low, gone = watcher.next(), watcher.next()
    assert (low.kind, low.reason) == (BECAME_LOW, pb.STOCK_MOVEMENT_REASON_OTHER)
    assert (gone.kind, gone.item_id, gone.quantity, gone.reason) == (
        RECOVERED,
        item.id,
        0,
        pb.STOCK_MOVEMENT_REASON_ITEM_DELETED,
    )
    watcher.stream.cancel()


def test_reconnecting_with_the_last_cursor_misses_nothing(items_stub):
    first = create(items_stub, quantity=3, low_stock_threshold=2)
    second = create(items_stub, quantity=3, low_stock_threshold=2)
    watcher = Watcher(items_stub, FROM_THE_START)
    adjust(items_stub, first.id, -1)
    last_seen = watcher.next()
    watcher.stream.cancel()

    adjust(items_stub, second.id, -1)  # while nobody watches
    adjust(items_stub, first.id, +5)
    resumed = Watcher(items_stub, pb.WatchLowStockRequest(after_cursor=last_seen.cursor))

    assert [(e.item_id, e.kind) for e in (resumed.next(), resumed.next())] == [
        (second.id, BECAME_LOW),
        (first.id, RECOVERED),
    ]
    resumed.stream.cancel()


def test_a_watch_respects_the_callers_deadline(items_stub):
    started = time.monotonic()
    watcher = Watcher(items_stub, pb.WatchLowStockRequest(), timeout=1)

    assert watcher.end_status(timeout=5) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3


@contextmanager
def one_watcher_server(engine):
    settings = InventorySettings(server=ServerSettings(), auth=TEST_AUTH, max_watchers=1)
    with serving(settings, engine) as running, authorized_channel(f"127.0.0.1:{running.port}", mint()) as channel:
        yield running, inventory_pb2_grpc.ItemServiceStub(channel)


def watch_once_a_place_is_free(stub, request: pb.WatchLowStockRequest, kept: str, within_s: float = 5) -> Watcher:
    """A watch that got a place, tried every 50 ms while the server answers RESOURCE_EXHAUSTED."""
    deadline = time.monotonic() + within_s
    while True:
        watcher = Watcher(stub, request)
        if watcher.delivered_before_ending():
            return watcher
        assert watcher.end_status() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() < deadline, kept
        time.sleep(0.05)


def test_a_cancelled_watch_frees_its_place(engine, empty_database):
    with one_watcher_server(engine) as (_, stub):
        first = Watcher(stub, FROM_THE_START)
        item = create(stub, quantity=1, low_stock_threshold=2)
        assert first.next().item_id == item.id  # the first watch holds the only place
        refused = Watcher(stub, FROM_THE_START)
        assert refused.end_status() == grpc.StatusCode.RESOURCE_EXHAUSTED

        first.stream.cancel()

        # The place is freed as soon as the server sees the cancellation.
        retry = watch_once_a_place_is_free(stub, FROM_THE_START, "the cancelled watch kept its place")
        assert retry.next().item_id == item.id
        retry.stream.cancel()


def test_a_watch_whose_caller_gave_up_while_it_opened_frees_its_place(postgres_url):
    # PostgreSQL's LOCK TABLE makes the watch's first read wait.
    category = f"gave-up-{uuid.uuid4().hex[:8]}"  # the database is shared: watch only this test's items
    with (
        migrated_engine(InventorySettings(database_url=postgres_url)) as engine,
        one_watcher_server(engine) as (_, stub),
        engine.connect() as locker,
    ):
        locker.exec_driver_sql("LOCK TABLE stock_movements IN ACCESS EXCLUSIVE MODE")  # until rollback
        # A watch from now reads the latest event id first: that read now waits for the lock,
        # in a database thread that cannot be stopped, past its caller's deadline.
        gave_up = Watcher(stub, pb.WatchLowStockRequest(), timeout=0.5)
        assert gave_up.end_status() == grpc.StatusCode.DEADLINE_EXCEEDED
        locker.rollback()

        item = create(stub, quantity=1, low_stock_threshold=2, category=category)
        # The watch opened for the caller that left is closed as soon as its read is done.
        retry = watch_once_a_place_is_free(
            stub,
            pb.WatchLowStockRequest(category=category, after_cursor=0),
            "the watch opened for a caller that left kept its place",
        )
        assert retry.next().item_id == item.id
        retry.stream.cancel()


def test_server_shutdown_ends_watch_streams_cleanly(engine, empty_database):
    with one_watcher_server(engine) as (running, stub):
        watcher = Watcher(stub, FROM_THE_START)
        item = create(stub, quantity=1, low_stock_threshold=2)
        assert watcher.next().item_id == item.id  # the stream is live

        threading.Thread(target=running.shutdown, args=(0, 5), daemon=True).start()

        assert watcher.end_status() == grpc.StatusCode.OK


# --- across replicas on PostgreSQL -----------------------------------------------------


@contextmanager
def replica(database_url: str, log_path: Path):
    """A real inventory server process, as a deployment runs it."""
    # Watchers re-read the ledger only every 30 s on their own: a quick event came by NOTIFY.
    env = service_env(
        INVENTORY_DATABASE_URL=database_url, INVENTORY_LISTEN_ADDRESS="127.0.0.1:0", INVENTORY_WATCH_POLL_S="30"
    )
    with (
        service_process("inventory_svc.server", env, log_path) as process,
        authorized_channel(process.wait_until_serving(), mint()) as channel,
    ):
        yield inventory_pb2_grpc.ItemServiceStub(channel)


def test_a_change_on_one_replica_reaches_a_watcher_on_another_within_a_second(postgres_url, tmp_path):
    migrate(postgres_url)
    with replica(postgres_url, tmp_path / "a.log") as replica_a, replica(postgres_url, tmp_path / "b.log") as replica_b:
        # This database is shared with other tests: the category keeps their events out of
        # a watch that starts at cursor 0 (and so cannot start after this test's first event).
        item = create(replica_b, quantity=3, low_stock_threshold=2, category="cross-replica")
        watcher = Watcher(replica_a, pb.WatchLowStockRequest(category="cross-replica", after_cursor=0))

        for delta, kind in ((-1, BECAME_LOW), (+5, RECOVERED), (-5, BECAME_LOW)):
            changed_at = time.monotonic()
            adjust(replica_b, item.id, delta)
            event = watcher.next(timeout=5)
            delay = time.monotonic() - changed_at

            assert (event.item_id, event.kind) == (item.id, kind)
            assert delay < 1.0, f"the event took {delay:.2f} s to cross replicas"
        watcher.stream.cancel()


def test_a_new_watch_starts_before_a_low_stock_event_still_being_committed(postgres_url):
    # Ordinary movements do not queue for the ids of low-stock events: one that commits
    # while an event is still open must not carry a new watcher's start past that event.
    def movement(change: LowStockChange) -> StockMovement:
        return StockMovement(
            item_id=1,
            sku="SKU-1",
            delta=-1,
            quantity_after=2,
            reason=MovementReason.SALE,
            low_stock_change=change,
            low_stock_threshold=2,
            customer_id="",
            category="",
        )

    with migrated_engine(InventorySettings(database_url=postgres_url)) as engine:
        with SqlUnitOfWork(engine, for_write=True) as open_event:
            open_event.movements.add(movement(LowStockChange.BECAME_LOW))
            with SqlUnitOfWork(engine, for_write=True) as ordinary:
                ordinary.movements.add(movement(LowStockChange.NONE))
                ordinary.commit()
            with SqlUnitOfWork(engine) as reader:
                start = reader.movements.latest_low_stock_event_id()
            open_event.commit()
        with SqlUnitOfWork(engine) as reader:
            seen = reader.movements.low_stock_events(start, "", "", 10)

    assert [event.low_stock_change for event in seen] == [LowStockChange.BECAME_LOW]


def test_a_watch_needs_a_token(inventory_address_any_db):
    with grpc.insecure_channel(inventory_address_any_db) as channel:
        stream = inventory_pb2_grpc.ItemServiceStub(channel).WatchLowStock(pb.WatchLowStockRequest(), timeout=5)
        error = rpc_error(next, stream)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_rule_broken_as_a_watch_opens_ends_the_stream_with_its_status(inventory_address_any_db):
    with authorized_channel(inventory_address_any_db, mint()) as channel:
        stream = inventory_pb2_grpc.ItemServiceStub(channel).WatchLowStock(
            pb.WatchLowStockRequest(after_cursor=-1), timeout=5
        )
        error = rpc_error(next, stream)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
