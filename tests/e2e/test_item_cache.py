"""GetItem's cache on PostgreSQL: a read through one replica sees a change made through
another within 100 ms, and a replica sees its own writes at once, whichever way the item
changed (AdjustQuantity, UpdateItem, DeleteItem, or SQL by hand)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import NamedTuple

import grpc
import psycopg2
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy.engine import make_url

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.settings import InventorySettings
from tests.helpers import (
    ServiceProcess, authorized_channel, create, free_port, migrated_engine, mint, service_env, service_process,
)

SEEN_WITHIN_S = 0.1


class Replica(NamedTuple):
    stub: inventory_pb2_grpc.ItemServiceStub
    process: ServiceProcess


@pytest.fixture
def replicas(postgres_url, tmp_path) -> Iterator[list[Replica]]:
    """Two inventory processes on one PostgreSQL database."""
    with migrated_engine(InventorySettings(database_url=postgres_url)):
        pass
    with ExitStack() as stack:
        started = []
        for number in range(2):
            address = f"127.0.0.1:{free_port()}"
            env = service_env(INVENTORY_DATABASE_URL=postgres_url, INVENTORY_LISTEN_ADDRESS=address)
            process = stack.enter_context(service_process("inventory_svc.server", env, tmp_path / f"inventory-{number}.log"))
            process.wait_until_serving(address)
            channel = stack.enter_context(authorized_channel(address, mint()))
            started.append(Replica(inventory_pb2_grpc.ItemServiceStub(channel), process))
        yield started


def quantity_seen_within(stub, item_id: int, expected: int) -> bool:
    deadline = time.monotonic() + SEEN_WITHIN_S
    while True:
        if stub.GetItem(pb.GetItemRequest(id=item_id)).item.quantity == expected:
            return True
        if time.monotonic() > deadline:
            return False


def warm(stub, item_id: int) -> None:
    for _ in range(3):
        stub.GetItem(pb.GetItemRequest(id=item_id))


def test_a_change_through_one_replica_is_read_through_the_other_within_100_ms(replicas):
    replica_a, replica_b = (replica.stub for replica in replicas)
    item = create(replica_a, quantity=10)
    for change in range(1, 6):
        warm(replica_a, item.id)
        replica_b.AdjustQuantity(pb.AdjustQuantityRequest(id=item.id, delta=1))

        assert quantity_seen_within(replica_a, item.id, 10 + change)
    hits = replicas[0].process.metrics()[("inventory_item_cache_lookups_total", frozenset({("result", "hit")}))]
    assert hits >= 5  # the reads came from the cache, which is what made them worth checking


def test_a_replica_reads_its_own_writes_at_once(replicas):
    replica_a = replicas[0].stub
    item = create(replica_a, quantity=10)
    for change in range(1, 6):
        warm(replica_a, item.id)
        replica_a.AdjustQuantity(pb.AdjustQuantityRequest(id=item.id, delta=1))

        assert replica_a.GetItem(pb.GetItemRequest(id=item.id)).item.quantity == 10 + change


def test_updates_deletes_and_hand_made_sql_reach_every_replica(replicas, postgres_url):
    replica_a, replica_b = (replica.stub for replica in replicas)
    item = create(replica_a, quantity=10)
    warm(replica_a, item.id)

    replica_b.UpdateItem(pb.UpdateItemRequest(item=pb.Item(id=item.id, quantity=20),
                                              update_mask=field_mask_pb2.FieldMask(paths=["quantity"])))
    assert quantity_seen_within(replica_a, item.id, 20)

    warm(replica_a, item.id)
    url = make_url(postgres_url)
    with psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as connection, \
            connection.cursor() as cursor:
        cursor.execute("UPDATE items SET quantity = 30 WHERE id = %s", (item.id,))
    assert quantity_seen_within(replica_a, item.id, 30)

    warm(replica_a, item.id)
    replica_b.DeleteItem(pb.DeleteItemRequest(id=item.id))
    deadline = time.monotonic() + SEEN_WITHIN_S
    while (code := rpc_error_or_none(replica_a, item.id)) != grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline:
        pass
    assert code == grpc.StatusCode.NOT_FOUND


def rpc_error_or_none(stub, item_id: int) -> grpc.StatusCode | None:
    try:
        stub.GetItem(pb.GetItemRequest(id=item_id))
    except grpc.RpcError as error:
        return error.code()
    return None
