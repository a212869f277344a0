"""Database connections cut from outside (a PostgreSQL restart or failover does this): with
pre-ping (the default) the next call gets a fresh connection; without, the call that meets
a dead connection answers UNAVAILABLE, never INTERNAL, nothing is half done, and the next
call works on a fresh connection."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import psycopg2
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_client import InventoryClient
from inventory_svc.settings import InventorySettings
from inventory_svc.storage import SqlUnitOfWork
from inventory_svc.storage import engine as storage_engine
from servicekit.errors import Unavailable
from servicekit.server_settings import ServerSettings
from tests.helpers import (
    TEST_AUTH,
    authorized_channel,
    create,
    error_reason,
    eventually,
    migrated_engine,
    mint,
    rpc_error,
    service_env,
    service_process,
    serving,
)


def cut_every_connection(database_url: str) -> None:
    url = make_url(database_url)
    with (
        psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres") as admin,
        admin.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (url.database,),
        )


@contextmanager
def admin_of(database_url: str) -> Iterator[psycopg2.extensions.cursor]:
    url = make_url(database_url)
    connection = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


@contextmanager
def connections_refused(database_url: str) -> Iterator[None]:
    """The database refuses every new connection, as a full server does ("too many clients").
    (Its CONNECTION LIMIT would not stop the tests' superuser; ALLOW_CONNECTIONS does.)"""
    name = make_url(database_url).database
    with admin_of(database_url) as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            yield
        finally:
            cursor.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@contextmanager
def serving_on_one_connection(postgres_url: str, pre_ping: bool) -> Iterator[str]:
    settings = InventorySettings(
        database_url=postgres_url,
        server=ServerSettings(),
        auth=TEST_AUTH,
        max_workers=1,
        db_pool_size=1,  # one connection: the test knows which one dies
        db_pool_pre_ping=pre_ping,
    )
    with migrated_engine(settings) as engine, serving(settings, engine) as running:
        yield f"127.0.0.1:{running.port}"


@contextmanager
def an_item_whose_connection_was_cut(
    postgres_url: str,
    pre_ping: bool,
) -> Iterator[tuple[inventory_pb2_grpc.ItemServiceStub, pb.Item]]:
    """A stub of a server on one connection, and an item made through it; then every database
    connection is cut."""
    with serving_on_one_connection(postgres_url, pre_ping) as address, authorized_channel(address, mint()) as channel:
        items = inventory_pb2_grpc.ItemServiceStub(channel)
        item = create(items, quantity=5)
        cut_every_connection(postgres_url)
        yield items, item


def test_with_pre_ping_a_call_after_every_connection_was_cut_gets_a_fresh_one(postgres_url):
    with an_item_whose_connection_was_cut(postgres_url, pre_ping=True) as (items, item):
        assert items.AdjustQuantity(pb.AdjustQuantityRequest(id=item.id, delta=3)).item.quantity == 8
        cut_every_connection(postgres_url)
        assert items.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 8


def test_without_pre_ping_a_cut_connection_is_unavailable_once_then_the_service_recovers(postgres_url):
    with an_item_whose_connection_was_cut(postgres_url, pre_ping=False) as (items, item):
        error = rpc_error(items.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=3))

        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error)[:2] == ("DATABASE_UNAVAILABLE", "inventory.v1")
        assert "psycopg2" not in error.details() and "SELECT" not in error.details()
        assert items.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 5
        cut_every_connection(postgres_url)
        assert rpc_error(items.GetItem, pb.GetItemRequest(id=item.id)).code() == grpc.StatusCode.UNAVAILABLE
        assert items.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 5


def test_the_typed_client_retries_a_read_that_met_a_cut_connection(postgres_url):
    # Without pre-ping, so that the read does meet the dead connection.
    with serving_on_one_connection(postgres_url, pre_ping=False) as address:
        with authorized_channel(address, mint()) as channel:
            item = create(inventory_pb2_grpc.ItemServiceStub(channel), quantity=5)
        with InventoryClient.connect(address, mint) as client:
            cut_every_connection(postgres_url)

            assert client.get_item(item.id).quantity == 5  # the channel's retry policy hid the UNAVAILABLE


def test_a_sqlite_writer_stuck_behind_another_is_unavailable_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_engine, "SQLITE_BUSY_TIMEOUT_MS", 200)  # not the 10 s a server waits
    database = tmp_path / "inventory.db"
    settings = InventorySettings(database_url=f"sqlite:///{database}", server=ServerSettings(), auth=TEST_AUTH)
    with (
        migrated_engine(settings) as engine,
        serving(settings, engine) as running,
        authorized_channel(f"127.0.0.1:{running.port}", mint()) as channel,
    ):
        items = inventory_pb2_grpc.ItemServiceStub(channel)
        item = create(items, quantity=5)
        other_writer = sqlite3.connect(database, isolation_level=None)
        other_writer.execute("BEGIN IMMEDIATE")
        try:
            error = rpc_error(items.AdjustQuantity, pb.AdjustQuantityRequest(id=item.id, delta=3))
        finally:
            other_writer.execute("ROLLBACK")
            other_writer.close()

        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "the database is busy; try again"
        assert items.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 5


def test_a_database_outage_logs_one_warning_with_its_reason_and_no_traceback(postgres_url, tmp_path):
    # A real server process: it runs the change listener too, whose connection the cut loses.
    def listener_connected() -> bool:
        with admin_of(postgres_url) as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                (make_url(postgres_url).database, "%inventory_listener_probe%"),
            )
            return cursor.fetchone()[0] > 0

    env = service_env(
        INVENTORY_DATABASE_URL=postgres_url, INVENTORY_LISTEN_ADDRESS="127.0.0.1:0", INVENTORY_DB_POOL_PRE_PING="false"
    )  # so that calls meet the dead connections too
    with (
        migrated_engine(InventorySettings(database_url=postgres_url)),
        service_process("inventory_svc.server", env, tmp_path / "inventory.log") as service,
    ):
        with authorized_channel(service.wait_until_serving(), mint()) as channel:
            items = inventory_pb2_grpc.ItemServiceStub(channel)
            item = create(items, quantity=5)
            assert eventually(listener_connected, 10)
            cut_every_connection(postgres_url)
            with connections_refused(postgres_url):
                codes = {rpc_error(items.GetItem, pb.GetItemRequest(id=item.id)).code() for _ in range(3)}
                assert eventually(lambda: any(line["level"] == "WARNING" for line in service.log_lines()), 10)
                time.sleep(2.5)  # the listener's reconnect attempts meet the refusal meanwhile
            assert eventually(lambda: any("listens again" in line["message"] for line in service.log_lines()), 10)
            assert items.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 5
        lines = service.log_lines()

    assert codes == {grpc.StatusCode.UNAVAILABLE}
    warnings = [line["message"] for line in lines if line["level"] not in ("DEBUG", "INFO")]
    assert len(warnings) == 1
    assert warnings[0].startswith("change listener lost its connection (OperationalError: ")
    assert not [line for line in lines if "exception" in line]


def test_a_call_that_finds_every_pooled_connection_in_use_is_unavailable(database_url):
    # An engine of its own with a short pool timeout: a server waits the default 30 s.
    url = make_url(database_url)
    url = url.set(drivername="postgresql+psycopg2") if url.drivername == "postgresql" else url
    engine = storage_engine.prepare_engine(create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.1))
    try:
        with engine.connect(), pytest.raises(Unavailable) as raised, SqlUnitOfWork(engine):
            pass
    finally:
        engine.dispose()

    assert str(raised.value) == "every database connection of this replica is in use; try again"
