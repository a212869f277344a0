"""The CRM when inventory fails: down, back, slow, or refusing the CRM's credentials."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import replace

import grpc
import pytest

from crm.v1 import crm_pb2 as crm
from crm.v1 import crm_pb2_grpc
from crm_svc.settings import CrmSettings
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.settings import InventorySettings
from servicekit.server_settings import ServerSettings
from tests.helpers import (
    TEST_AUTH,
    authorized_channel,
    create,
    error_reason,
    free_port,
    mint,
    retry_delay_s,
    rpc_error,
    serving,
    serving_crm,
)

# gRPC sends a deadline as a timeout header rounded up, so the receiver may see a hair more.
TIMEOUT_ROUNDING_S = 0.01


def crm_settings(inventory_port: int, **overrides) -> CrmSettings:
    return CrmSettings(
        server=ServerSettings(),
        inventory_target=f"127.0.0.1:{inventory_port}",
        auth=TEST_AUTH,
        inventory_auth=TEST_AUTH,
        **overrides,
    )


def customer_stub(address: str, customer_id: str = "alice"):
    channel = authorized_channel(address, mint(subject=customer_id, roles=("customer",)))
    return channel, crm_pb2_grpc.CustomerItemsServiceStub(channel)


def test_inventory_down_is_unavailable_quickly_and_the_crm_recovers_when_it_is_back(engine, empty_database):
    port = free_port()
    inventory_settings = InventorySettings(server=ServerSettings(listen_address=f"127.0.0.1:{port}"), auth=TEST_AUTH)
    with serving_crm(crm_settings(port)) as crm_running:
        channel, alice = customer_stub(f"127.0.0.1:{crm_running.port}")
        with channel:
            with serving(inventory_settings, engine) as inventory:
                with authorized_channel(f"127.0.0.1:{inventory.port}", mint()) as admin:
                    create(inventory_pb2_grpc.ItemServiceStub(admin), customer_id="alice")
                assert len(alice.ListMyItems(crm.ListMyItemsRequest(), timeout=5).items) == 1

            started = time.monotonic()
            error = rpc_error(alice.ListMyItems, crm.ListMyItemsRequest(), timeout=10)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == "the inventory service is unavailable: try again shortly"
            assert error_reason(error) == ("INVENTORY_UNAVAILABLE", "crm.v1", {})
            assert retry_delay_s(error) == 0.1
            assert time.monotonic() - started < 3, "a customer must not wait long for a dead inventory"

            with serving(inventory_settings, engine):
                deadline = time.monotonic() + 10
                while True:
                    try:
                        reply = alice.ListMyItems(crm.ListMyItemsRequest(), timeout=2)
                        break
                    except grpc.RpcError as still_down:
                        assert still_down.code() == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() < deadline, "the CRM did not recover within 10 s"
                        time.sleep(0.2)
                assert len(reply.items) == 1


SLOW_INVENTORY_S = 5
# Ample for a loaded machine to set up both connections within, and well short of SLOW_INVENTORY_S.
DEADLINE_S = 2


class SlowInventory(inventory_pb2_grpc.ItemServiceServicer):
    """A stand-in for an overloaded inventory: a real database cannot be made slow on
    demand on both backends, so this one waits until the caller gives up (or 5 s), and
    records the deadline and request id it was called with."""

    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []
        self.request_ids: list[str] = []
        self.finished = threading.Event()

    def ListCustomerItems(self, request, context):
        self.time_remaining.append(context.time_remaining())
        self.request_ids += [value for key, value in context.invocation_metadata() if key == "x-request-id"]
        give_up_at = time.monotonic() + SLOW_INVENTORY_S
        while context.is_active() and time.monotonic() < give_up_at:
            time.sleep(0.01)
        self.finished.set()
        return pb.ListCustomerItemsResponse()


@pytest.fixture
def slow_inventory():
    servicer = SlowInventory()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None).wait()


def test_the_callers_deadline_reaches_inventory_and_bounds_the_crm_call(slow_inventory):
    port, servicer = slow_inventory
    with serving_crm(crm_settings(port)) as crm_running:
        channel, alice = customer_stub(f"127.0.0.1:{crm_running.port}")
        with channel:
            started = time.monotonic()
            error = rpc_error(
                alice.ListMyItems, crm.ListMyItemsRequest(), timeout=DEADLINE_S, metadata=(("x-request-id", "req-42"),)
            )
            elapsed = time.monotonic() - started

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < SLOW_INVENTORY_S - 1, "the CRM waited for the slow inventory"
    assert len(servicer.time_remaining) == 1, "the call never reached inventory"
    assert servicer.time_remaining[0] is not None and servicer.time_remaining[0] <= DEADLINE_S + TIMEOUT_ROUNDING_S
    assert servicer.request_ids == ["req-42"]
    assert servicer.finished.wait(2), "inventory kept working after the caller had given up"


def test_without_a_caller_deadline_the_crm_applies_its_own(slow_inventory):
    port, servicer = slow_inventory
    with serving_crm(crm_settings(port, inventory_timeout_s=DEADLINE_S)) as crm_running:
        channel, alice = customer_stub(f"127.0.0.1:{crm_running.port}")
        with channel:
            started = time.monotonic()
            error = rpc_error(alice.ListMyItems, crm.ListMyItemsRequest())
            elapsed = time.monotonic() - started

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < SLOW_INVENTORY_S - 1, "the CRM waited for the slow inventory"
    assert len(servicer.time_remaining) == 1, "the call never reached inventory"
    assert servicer.time_remaining[0] is not None and servicer.time_remaining[0] <= DEADLINE_S + TIMEOUT_ROUNDING_S
    assert len(servicer.request_ids) == 1  # one was made up for the logs


def test_inventory_refusing_the_crms_token_is_unavailable_to_the_customer(inventory_server, empty_database, tmp_path):
    token_file = tmp_path / "crm-token"
    token_file.write_text(mint(subject="crm", roles=("customer",)))  # lacks inventory.read
    settings = crm_settings(inventory_server.port, inventory_token_file=str(token_file))
    with serving_crm(settings) as crm_running:
        channel, alice = customer_stub(f"127.0.0.1:{crm_running.port}")
        with channel:
            error = rpc_error(alice.ListMyItems, crm.ListMyItemsRequest(), timeout=5)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the inventory service refused this service's credentials"
    assert error_reason(error) == ("INVENTORY_UNAVAILABLE", "crm.v1", {})


def test_the_crm_picks_up_a_renewed_token_file(inventory_server, empty_database, tmp_path):
    token_file = tmp_path / "crm-token"
    token_file.write_text("expired-or-garbage")
    settings = crm_settings(inventory_server.port, inventory_token_file=str(token_file))
    with serving_crm(settings) as crm_running:
        channel, alice = customer_stub(f"127.0.0.1:{crm_running.port}")
        with channel:
            refused = rpc_error(alice.ListMyItems, crm.ListMyItemsRequest(), timeout=5)
            token_file.write_text(mint(subject="crm", roles=("inventory.read",)))
            accepted = alice.ListMyItems(crm.ListMyItemsRequest(), timeout=5)

    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert accepted.total_size == 0


def test_a_missing_token_file_is_unavailable_to_the_customer(inventory_server, empty_database, tmp_path):
    settings = crm_settings(inventory_server.port, inventory_token_file=str(tmp_path / "not-there"))
    with serving_crm(settings) as crm_running:
        channel, alice = customer_stub(f"127.0.0.1:{crm_running.port}")
        with channel:
            error = rpc_error(alice.ListMyItems, crm.ListMyItemsRequest(), timeout=5)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "this service's credentials are missing"
    assert error_reason(error) == ("CREDENTIALS_MISSING", "crm.v1", {})


def test_crm_and_inventory_can_use_audiences_of_their_own(engine, empty_database):
    inventory_auth = replace(TEST_AUTH, audience="inventory")
    customer_auth = replace(TEST_AUTH, audience="crm")
    inventory_settings = InventorySettings(server=ServerSettings(), auth=inventory_auth)
    with serving(inventory_settings, engine) as inventory:
        settings = CrmSettings(
            server=ServerSettings(),
            inventory_target=f"127.0.0.1:{inventory.port}",
            auth=customer_auth,
            inventory_auth=inventory_auth,
        )
        customer_token = mint(subject="alice", roles=("customer", "inventory.read"), auth=customer_auth)
        with (
            serving_crm(settings) as crm_running,
            authorized_channel(f"127.0.0.1:{crm_running.port}", customer_token) as channel,
        ):
            reply = crm_pb2_grpc.CustomerItemsServiceStub(channel).ListMyItems(crm.ListMyItemsRequest(), timeout=5)
        with authorized_channel(f"127.0.0.1:{inventory.port}", customer_token) as channel:
            refused = rpc_error(inventory_pb2_grpc.ItemServiceStub(channel).ListItems, pb.ListItemsRequest())

    assert reply.total_size == 0
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED  # a CRM token is not an inventory token
