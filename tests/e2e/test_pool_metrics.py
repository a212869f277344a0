"""The pool gauges read what the pool holds, through database cuts and refused connections:
in use never below zero and back to zero when idle, open never above pool_size +
max_overflow and equal to the connections the database itself sees."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.server import watch_pool
from inventory_svc.settings import InventorySettings
from servicekit.observability import ServerMetrics
from servicekit.server_settings import ServerSettings
from tests.e2e.test_database_faults import admin_of, connections_refused, cut_every_connection
from tests.helpers import TEST_AUTH, authorized_channel, create, eventually, migrated_engine, mint, rpc_error, serving

POOL_SIZE = 2  # build_engine allows as many again as overflow


def connections_seen_by_the_database(database_url: str) -> int:
    with admin_of(database_url) as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
            (make_url(database_url).database,),
        )
        return int(cursor.fetchone()[0])


@pytest.fixture(params=[True, False], ids=["pre-ping", "no-pre-ping"])
def served(request, postgres_url) -> Iterator[tuple[inventory_pb2_grpc.ItemServiceStub, Engine, ServerMetrics]]:
    settings = InventorySettings(
        database_url=postgres_url,
        server=ServerSettings(),
        auth=TEST_AUTH,
        max_workers=8,
        db_pool_size=POOL_SIZE,
        db_pool_pre_ping=request.param,
    )
    metrics = ServerMetrics()
    with migrated_engine(settings) as engine:
        watch_pool(metrics, engine.pool, POOL_SIZE)
        with serving(settings, engine) as running, authorized_channel(f"127.0.0.1:{running.port}", mint()) as channel:
            yield inventory_pb2_grpc.ItemServiceStub(channel), engine, metrics


def gauge(metrics: ServerMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def busy(items: inventory_pb2_grpc.ItemServiceStub, item_id: int, calls: int = 40) -> list[grpc.StatusCode]:
    """Many calls at once, so that the pool lends out every connection and overflows."""

    def call(_: int) -> grpc.StatusCode:
        try:
            items.AdjustQuantity(pb.AdjustQuantityRequest(id=item_id, delta=1))
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(call, range(calls)))


def test_the_gauges_read_what_the_pool_holds_after_cuts_and_refusals(served, postgres_url):
    items, _engine, metrics = served
    item = create(items, quantity=1)
    for _ in range(3):
        busy(items, item.id)
        cut_every_connection(postgres_url)
        busy(items, item.id)  # without pre-ping some of these meet the dead connections
        with connections_refused(postgres_url):
            cut_every_connection(postgres_url)
            assert set(busy(items, item.id, calls=10)) == {grpc.StatusCode.UNAVAILABLE}
            assert gauge(metrics, "db_pool_connections_in_use") == 0
            assert gauge(metrics, "db_pool_connections_open") == 0

    busy(items, item.id)
    assert gauge(metrics, "db_pool_connections_in_use") == 0
    assert 1 <= gauge(metrics, "db_pool_connections_open") <= 2 * POOL_SIZE
    # Polled: a backend whose connection was just closed stays in pg_stat_activity a moment.
    assert eventually(
        lambda: gauge(metrics, "db_pool_connections_open") == connections_seen_by_the_database(postgres_url), 5
    )


def test_in_use_counts_the_connections_lent_out_now(served):
    items, engine, metrics = served
    create(items)
    with engine.connect():
        assert gauge(metrics, "db_pool_connections_in_use") == 1
    assert gauge(metrics, "db_pool_connections_in_use") == 0


def test_a_refused_connection_is_unavailable_over_grpc(served, postgres_url):
    items, _engine, _metrics = served
    item = create(items)
    with connections_refused(postgres_url):
        cut_every_connection(postgres_url)
        error = rpc_error(items.GetItem, pb.GetItemRequest(id=item.id))
        write_error = rpc_error(items.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=1))

    assert error.code() == write_error.code() == grpc.StatusCode.UNAVAILABLE
    assert "psycopg2" not in error.details() and "FATAL" not in error.details()
    assert items.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == item.quantity
