"""The CRM spreads its calls over every inventory replica its target names (round_robin,
as with a headless Service on Kubernetes) and keeps answering when one replica stops."""

from __future__ import annotations

from contextlib import ExitStack

from crm.v1 import crm_pb2, crm_pb2_grpc
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.settings import InventorySettings
from tests.helpers import (
    authorized_channel, create, free_port, migrated_engine, mint, service_env, service_process,
)

CALLS = 30


def handled_get_items(replica) -> float:
    return replica.metrics().get(("grpc_server_handled_total", frozenset({
        ("grpc_service", "inventory.v1.ItemService"), ("grpc_method", "GetItem"), ("grpc_code", "OK"),
    })), 0.0)


def test_crm_spreads_calls_over_three_inventories_and_survives_one_stopping(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'inventory.db'}"
    with migrated_engine(InventorySettings(database_url=database_url)):
        pass
    inventory_addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    crm_address = f"127.0.0.1:{free_port()}"
    env = service_env(INVENTORY_DATABASE_URL=database_url, CRM_LISTEN_ADDRESS=crm_address,
                      # A static list of addresses resolves like the headless Service's DNS name does.
                      CRM_INVENTORY_TARGET="ipv4:" + ",".join(inventory_addresses))
    with ExitStack() as stack:
        replicas = []
        for number, address in enumerate(inventory_addresses):
            replica = stack.enter_context(service_process(
                "inventory_svc.server", {**env, "INVENTORY_LISTEN_ADDRESS": address}, tmp_path / f"inventory-{number}.log"))
            replica.wait_until_serving(address)
            replicas.append(replica)
        crm = stack.enter_context(service_process("crm_svc.server", env, tmp_path / "crm.log"))
        crm.wait_until_serving(crm_address)
        with authorized_channel(inventory_addresses[0], mint()) as channel:
            item = create(inventory_pb2_grpc.ItemServiceStub(channel), customer_id="alice")
        alice = crm_pb2_grpc.CustomerItemsServiceStub(
            stack.enter_context(authorized_channel(crm_address, mint("alice", ("customer",)))))

        for _ in range(CALLS):
            assert alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id), timeout=5).item.id == item.id
        spread = [handled_get_items(replica) for replica in replicas]
        assert sum(spread) == CALLS and all(calls > 0 for calls in spread), spread

        replicas[0].stop()
        for _ in range(CALLS):
            assert alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id), timeout=5).item.id == item.id
        after = [handled_get_items(replica) for replica in replicas[1:]]
        assert sum(after) - sum(spread[1:]) == CALLS and all(
            now > before for now, before in zip(after, spread[1:])), (spread, after)
