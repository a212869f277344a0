"""The CRM spreads its calls over every inventory replica its target names (round_robin,
as with a headless Service on Kubernetes) and keeps answering when one replica stops."""

from __future__ import annotations

import time
from contextlib import ExitStack

from crm.v1 import crm_pb2, crm_pb2_grpc
from inventory.v1 import inventory_pb2_grpc
from tests.helpers import (
    authorized_channel,
    create,
    migrate,
    mint,
    service_env,
    service_process,
)

CALLS = 30


def handled_get_items(replica) -> float:
    return replica.metrics().get(
        (
            "grpc_server_handled_total",
            frozenset(
                {
                    ("grpc_type", "unary"),
                    ("grpc_service", "inventory.v1.ItemService"),
                    ("grpc_method", "GetItem"),
                    ("grpc_code", "OK"),
                }
            ),
        ),
        0.0,
    )


def test_crm_spreads_calls_over_three_inventories_and_survives_one_stopping(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'inventory.db'}"
    migrate(database_url)
    env = service_env(
        INVENTORY_DATABASE_URL=database_url, INVENTORY_LISTEN_ADDRESS="127.0.0.1:0", CRM_LISTEN_ADDRESS="127.0.0.1:0"
    )
    with ExitStack() as stack:
        replicas, inventory_addresses = [], []
        for number in range(3):
            replica = stack.enter_context(
                service_process("inventory_svc.server", env, tmp_path / f"inventory-{number}.log")
            )
            inventory_addresses.append(replica.wait_until_serving())
            replicas.append(replica)
        # A static list of addresses resolves like the headless Service's DNS name does.
        crm_env = {**env, "CRM_INVENTORY_TARGET": "ipv4:" + ",".join(inventory_addresses)}
        crm = stack.enter_context(service_process("crm_svc.server", crm_env, tmp_path / "crm.log"))
        crm_address = crm.wait_until_serving()
        with authorized_channel(inventory_addresses[0], mint()) as channel:
            item = create(inventory_pb2_grpc.ItemServiceStub(channel), customer_id="alice")
        alice = crm_pb2_grpc.CustomerItemsServiceStub(
            stack.enter_context(authorized_channel(crm_address, mint("alice", ("customer",))))
        )

        # Round robin picks among the connections that are up: until all three are, the first
        # calls may go to fewer replicas.
        deadline = time.monotonic() + 10
        while not all(handled_get_items(replica) > 0 for replica in replicas):
            alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id), timeout=5)
            assert time.monotonic() < deadline, [handled_get_items(replica) for replica in replicas]
        before = [handled_get_items(replica) for replica in replicas]
        for _ in range(CALLS):
            assert alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id), timeout=5).item.id == item.id
        spread = [handled_get_items(replica) - calls for replica, calls in zip(replicas, before, strict=True)]
        assert sum(spread) == CALLS and all(calls >= CALLS / 6 for calls in spread), spread

        totals = [handled_get_items(replica) for replica in replicas]
        replicas[0].stop()
        for _ in range(CALLS):
            assert alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id), timeout=5).item.id == item.id
        after = [handled_get_items(replica) for replica in replicas[1:]]
        assert sum(after) - sum(totals[1:]) == CALLS and all(
            now > before for now, before in zip(after, totals[1:], strict=True)
        ), (
            totals,
            after,
        )
