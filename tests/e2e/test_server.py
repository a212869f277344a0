"""What the server offers around the items: health, unexpected errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.server import ITEM_SERVICE_NAME, build_engine
from inventory_svc.settings import InventorySettings
from servicekit.observability import ServerMetrics
from servicekit.server import BindError, finish_server, new_server
from servicekit.server_settings import ServerLimits, ServerSettings
from tests.helpers import TEST_AUTH, authorized_channel, eventually, free_port, mint, rpc_error, serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", ["", ITEM_SERVICE_NAME])
def test_health_reports_serving_for_the_server_and_the_item_service(inventory_address_any_db, service):
    with grpc.insecure_channel(inventory_address_any_db) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(inventory_address_any_db):
    with grpc.insecure_channel(inventory_address_any_db) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        error = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="no.such.Service"))

    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_unexpected_error_is_internal_without_internals(tmp_path):
    # A real database with no schema: every query fails inside SQLAlchemy.
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path / 'unmigrated.db'}", server=ServerSettings(), auth=TEST_AUTH
    )
    engine = build_engine(settings)
    try:
        with serving(settings, engine) as running, authorized_channel(f"127.0.0.1:{running.port}", mint()) as channel:
            stub = inventory_pb2_grpc.ItemServiceStub(channel)
            error = rpc_error(stub.GetItem, pb.GetItemRequest(id=1))
    finally:
        engine.dispose()

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "items" not in str(error.trailing_metadata())


def _health_status(address: str) -> int | None:
    try:
        with grpc.insecure_channel(address) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
    except grpc.RpcError:
        return None


def test_sigterm_reports_not_serving_then_exits_cleanly(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "INVENTORY_DATABASE_URL": f"sqlite:///{tmp_path / 'inventory.db'}",
        "INVENTORY_LISTEN_ADDRESS": address,
        "INVENTORY_SHUTDOWN_DRAIN_S": "5",  # longer than the 3 s the test looks for NOT_SERVING
        "INVENTORY_SHUTDOWN_GRACE_S": "2",
        "JWT_SECRET": TEST_AUTH.secret,
        "INVENTORY_METRICS_ADDRESS": "off",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "inventory_svc.server"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert eventually(lambda: _health_status(address) == health_pb2.HealthCheckResponse.SERVING, 20)

        server.send_signal(signal.SIGTERM)

        assert eventually(lambda: _health_status(address) == health_pb2.HealthCheckResponse.NOT_SERVING, 3)
        assert server.wait(timeout=15) == 0
    finally:
        server.kill()
        output = server.communicate()[0]
    assert "inventory stopped" in output


async def _binds_a_second_server_on_the_port_of_the_first(reuse_port: bool) -> bool:
    first = new_server(ServerMetrics(), None, ServerLimits(), reuse_port=reuse_port)
    running = await finish_server(first, "127.0.0.1:0", [])
    second = new_server(ServerMetrics(), None, ServerLimits(), reuse_port=reuse_port)
    try:
        await finish_server(second, f"127.0.0.1:{running.port}", [])
        return True
    except BindError:
        return False
    finally:
        await second.stop(None)
        await first.stop(None)


def test_a_second_server_on_a_taken_port_fails_to_bind_unless_it_reuses_the_port():
    """A copy started by mistake must not quietly take half of the calls; the supervisor's
    workers share their port on purpose (REUSE_PORT)."""
    assert asyncio.run(_binds_a_second_server_on_the_port_of_the_first(reuse_port=False)) is False
    assert asyncio.run(_binds_a_second_server_on_the_port_of_the_first(reuse_port=True)) is True
