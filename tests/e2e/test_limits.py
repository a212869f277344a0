"""No caller can hold a server's capacity: requests that never arrive, calls past a subject's
cap, connections that never finish a request, ping floods, watches past a subject's cap,
bytes that are no message, and abandoned reflection streams, each against a real server."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import h2.errors
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.server import build_item_service, build_server, database_threads
from inventory_svc.settings import InventorySettings
from servicekit.observability import ServerMetrics
from servicekit.pipeline import CallLimits
from servicekit.server import ServerThread
from servicekit.server_settings import ServerLimits, ServerSettings
from tests.helpers import TEST_AUTH, authorized_channel, create, error_reason, migrated_engine, mint, rpc_error
from tests.raw_http2 import RawHttp2Client

# Generous: a call answered in time on a loaded machine, not a benchmark figure.
ANSWERED_WITHIN_S = 2.0
ITEM_SERVICE = "inventory.v1.ItemService"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@dataclass
class LimitedServer:
    host: str
    port: int
    metrics: ServerMetrics
    database: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def handled(self, service: str, method: str, code: str, grpc_type: str = "unary") -> float:
        value = self.metrics.registry.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method, "grpc_code": code},
        )
        return value or 0.0

    def in_flight(self, method: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "grpc_server_in_flight", {"grpc_type": "unary", "grpc_service": ITEM_SERVICE, "grpc_method": method}
        )
        return value or 0.0


@contextmanager
def limited_server(tmp_path: Path, limits: ServerLimits | None = None, **settings: object) -> Iterator[LimitedServer]:
    """A real inventory server on a SQLite database of its own, with `limits`, whose metrics
    registry the test reads."""
    database = tmp_path / "inventory.db"
    inventory_settings = InventorySettings(
        database_url=f"sqlite:///{database}",
        server=ServerSettings(limits=limits or ServerLimits()),
        auth=TEST_AUTH,
        **settings,
    )  # type: ignore[arg-type]
    metrics = ServerMetrics()
    with (
        migrated_engine(inventory_settings) as engine,
        database_threads(inventory_settings) as threads,
        ServerThread(
            lambda: build_server(
                inventory_settings, build_item_service(engine, inventory_settings), threads, metrics=metrics
            )
        ) as served,
    ):
        yield LimitedServer("127.0.0.1", served.port, metrics, database)


@contextmanager
def item_stub(server: LimitedServer, subject: str) -> Iterator[inventory_pb2_grpc.ItemServiceStub]:
    # A connection of its own for each subject, so that one subject's calls share nothing with another's.
    options = (("grpc.use_local_subchannel_pool", 1),)
    with authorized_channel(server.address, mint(subject), options) as channel:
        yield inventory_pb2_grpc.ItemServiceStub(channel)


@contextmanager
def sqlite_write_lock(database: Path) -> Iterator[None]:
    """Another connection holds the database's write lock: every write waits behind it
    (reads go on, in WAL mode), which makes a write call slow for as long as the test needs."""
    other_writer = sqlite3.connect(database, isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


def until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def timed(call, *args, **kwargs):
    started = time.monotonic()
    reply = call(*args, **kwargs)
    return reply, time.monotonic() - started


# --- requests that never arrive -------------------------------------------------------------


def test_connections_full_of_requests_that_never_arrive_leave_the_server_answering(tmp_path):
    limits = ServerLimits(max_streams_per_connection=100)
    with (
        limited_server(tmp_path, limits) as server,
        item_stub(server, "tester") as items,
        grpc.insecure_channel(server.address, (("grpc.use_local_subchannel_pool", 1),)) as health_channel,
    ):
        item = create(items)
        floods = [RawHttp2Client(server.host, server.port, respect_stream_limit=False) for _ in range(3)]
        try:
            for flood in floods:
                assert flood.server_max_concurrent_streams == 100
                sent = flood.open_header_only_streams(150, token=mint("tester"))
                assert len(sent) == 150  # this client ignores the server's limit
            for flood in floods:  # the server refuses what is past its limit on each connection
                assert flood.wait_until(lambda flood=flood: len(flood.reset_streams()) >= 50, 5), (
                    f"only {len(flood.reset_streams())} of the streams past the limit were refused"
                )
                assert set(flood.reset_streams().values()) == {h2.errors.ErrorCodes.REFUSED_STREAM}

            health = health_pb2_grpc.HealthStub(health_channel)
            for _ in range(5):
                reply, health_s = timed(health.Check, health_pb2.HealthCheckRequest(), timeout=ANSWERED_WITHIN_S)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                reply, get_s = timed(items.GetItem, pb.GetItemRequest(id=item.id), timeout=ANSWERED_WITHIN_S)
                assert reply.item.id == item.id
                assert health_s < ANSWERED_WITHIN_S and get_s < ANSWERED_WITHIN_S
                for flood in floods:
                    flood.pump(0.05)
            for flood in floods:  # still held: 100 streams on each, none finished, none of them counted
                assert not flood.closed
                assert len(flood.reset_streams()) == 50
        finally:
            for flood in floods:
                flood.close()


# --- calls in flight per subject ----------------------------------------------------------


def test_a_subjects_calls_past_its_cap_are_resource_exhausted_with_retry_info_while_others_are_served(tmp_path):
    limits = ServerLimits(calls=CallLimits(max_calls_per_subject=2))
    with (
        limited_server(tmp_path, limits) as server,
        item_stub(server, "alice") as alice,
        item_stub(server, "bob") as bob,
        ThreadPoolExecutor(2) as callers,
    ):
        item = create(alice, quantity=10)
        with sqlite_write_lock(server.database):
            slow = [
                callers.submit(alice.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=1), timeout=30)
                for _ in range(2)
            ]
            assert until(lambda: server.in_flight("AdjustQuantity") == 2), "the two slow calls never started"

            refused = rpc_error(
                alice.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=1), timeout=ANSWERED_WITHIN_S
            )
            reply, bob_s = timed(bob.GetItem, pb.GetItemRequest(id=item.id), timeout=ANSWERED_WITHIN_S)

            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert retry_info(refused) is not None, "RESOURCE_EXHAUSTED without a google.rpc.RetryInfo"
            assert error_reason(refused)[:2] == ("TOO_MANY_CALLS", "inventory.v1")
            assert reply.item.quantity == 10 and bob_s < ANSWERED_WITHIN_S
            assert all(not call.done() for call in slow)  # the cap was met by calls still in flight
        assert sorted(call.result().item.quantity for call in slow) == [11, 12]  # the refused one changed nothing
        assert alice.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 12


def test_a_subject_with_an_override_has_its_own_cap(tmp_path):
    limits = ServerLimits(calls=CallLimits(max_calls_per_subject=2, calls_per_subject_override={"crm": 5}))
    with limited_server(tmp_path, limits) as server, item_stub(server, "crm") as crm, ThreadPoolExecutor(5) as callers:
        item = create(crm, quantity=10)
        with sqlite_write_lock(server.database):
            slow = [
                callers.submit(crm.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=1), timeout=30)
                for _ in range(5)
            ]
            assert until(lambda: server.in_flight("AdjustQuantity") == 5), "five calls of crm were not all admitted"
            refused = rpc_error(
                crm.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=1), timeout=ANSWERED_WITHIN_S
            )
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # its own cap, five, still holds
            assert all(not call.done() for call in slow)
        assert sorted(call.result().item.quantity for call in slow) == [11, 12, 13, 14, 15]


# --- connections ------------------------------------------------------------------------------


def test_a_connection_that_never_completes_a_request_is_told_to_go_away_then_closed(tmp_path):
    limits = ServerLimits(max_connection_age_s=1, max_connection_age_grace_s=1)
    with limited_server(tmp_path, limits) as server, RawHttp2Client(server.host, server.port) as raw:
        started = time.monotonic()
        held = raw.open_header_only_streams(5, token=mint())
        assert len(held) == 5

        assert raw.wait_until(lambda: raw.goaway() is not None, 5), "no GOAWAY after the connection's age"
        assert raw.wait_until(lambda: raw.closed, 5), "the server kept the connection past its grace"
        assert time.monotonic() - started < 6
        # What the requests that never arrived were told: go elsewhere (clients retry UNAVAILABLE).
        assert {raw.replies[stream].grpc_status for stream in held} == {grpc.StatusCode.UNAVAILABLE.value[0]}


def test_a_client_pinging_in_a_tight_loop_is_told_too_many_pings_and_disconnected(tmp_path):
    with (
        limited_server(tmp_path, ServerLimits(min_client_ping_interval_s=10)) as server,
        RawHttp2Client(server.host, server.port) as raw,
    ):
        deadline = time.monotonic() + 5
        pings = 0
        while raw.goaway() is None and not raw.closed and time.monotonic() < deadline:
            raw.ping(pings.to_bytes(8, "big"))
            pings += 1
            raw.pump(0.01)

        goaway = raw.goaway()
        assert goaway is not None, f"no GOAWAY after {pings} pings"
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert goaway.additional_data == b"too_many_pings"
        assert raw.wait_until(lambda: raw.closed, 5), "the server kept the connection after its GOAWAY"


# --- open watches per subject ----------------------------------------------------------------


class Watch:
    """A WatchLowStock stream read in a thread."""

    def __init__(self, stub: inventory_pb2_grpc.ItemServiceStub) -> None:
        self.stream = stub.WatchLowStock(pb.WatchLowStockRequest(after_cursor=0), timeout=30)
        self.outcome: queue.Queue = queue.Queue()  # the first event, or the error that ended the stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.outcome.put(event)
        except grpc.RpcError as error:
            self.outcome.put(error)

    def first(self, timeout_s: float = 5) -> object:
        return self.outcome.get(timeout=timeout_s)


def test_a_subjects_watch_past_its_cap_is_resource_exhausted_with_retry_info_while_others_open(tmp_path):
    with (
        limited_server(tmp_path, max_watches_per_subject=1) as server,
        item_stub(server, "alice") as alice,
        item_stub(server, "bob") as bob,
    ):
        item = create(alice, quantity=1, low_stock_threshold=2)  # low from the start: every watch sees it
        first = Watch(alice)
        try:
            assert isinstance(first.first(), pb.WatchLowStockResponse)  # alice's one watch is open

            refused = Watch(alice).first()
            others = Watch(bob)
            try:
                bobs_event = others.first()
            finally:
                others.stream.cancel()
        finally:
            first.stream.cancel()

    assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_info(refused) is not None, "RESOURCE_EXHAUSTED without a google.rpc.RetryInfo"
    assert error_reason(refused)[:2] == ("TOO_MANY_WATCHES", "inventory.v1")
    assert isinstance(bobs_event, pb.WatchLowStockResponse) and bobs_event.item_id == item.id


# --- bytes that are no message ---------------------------------------------------------------


@pytest.mark.parametrize("with_token", [True, False], ids=["with-token", "without-token"])
def test_request_bytes_that_are_no_message_are_invalid_argument_and_counted_so(tmp_path, with_token):
    with limited_server(tmp_path) as server, RawHttp2Client(server.host, server.port) as raw:
        reply = raw.call(f"/{ITEM_SERVICE}/ListItems", bytes.fromhex("08ffff"), token=mint() if with_token else "")

        # The server counts a call just after its status has left.
        counted = until(lambda: server.handled(ITEM_SERVICE, "ListItems", "INVALID_ARGUMENT") == 1)
        time.sleep(0.1)  # and nothing else is counted for it

        assert reply.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert counted, "not counted as INVALID_ARGUMENT"
        assert server.handled(ITEM_SERVICE, "ListItems", "INVALID_ARGUMENT") == 1
        assert (
            sum(
                server.handled(ITEM_SERVICE, "ListItems", code)
                for code in ("OK", "INTERNAL", "UNKNOWN", "UNAUTHENTICATED")
            )
            == 0
        )


# --- abandoned streams -----------------------------------------------------------------------


def test_a_cancelled_reflection_stream_is_counted_cancelled_and_logs_no_error(tmp_path, caplog):
    requests: queue.Queue = queue.Queue()

    def request_stream():
        while (request := requests.get()) is not None:
            yield request

    caplog.set_level(logging.INFO)  # the access log too: it shows the server's lines are captured
    with limited_server(tmp_path) as server, grpc.insecure_channel(server.address) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(request_stream(), timeout=30)
        requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = next(stream)
        stream.cancel()
        requests.put(None)

        counted = until(lambda: server.handled(REFLECTION, "ServerReflectionInfo", "CANCELLED", "bidi_stream") == 1)
        others = {
            code: server.handled(REFLECTION, "ServerReflectionInfo", code, "bidi_stream")
            for code in ("OK", "UNKNOWN", "INTERNAL")
        }

    assert ITEM_SERVICE in {service.name for service in reply.list_services_response.service}
    assert counted, f"not counted as CANCELLED: {others}"
    assert "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo CANCELLED" in caplog.messages
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
