"""INVENTORY_PROCESSES: several server processes share one port, their metrics add up at
one endpoint, and SIGTERM stops them all gracefully."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from tests.helpers import (
    ServiceProcess,
    authorized_channel,
    free_port,
    migrate,
    mint,
    rpc_error,
    service_env,
    service_process,
)

CONNECTIONS = 20
# Channels to one address otherwise share a process-wide connection pool: a channel opened
# just after another closed could reuse its connection, and so its server process.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def test_two_processes_share_the_port_and_report_their_calls_together(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'inventory.db'}"
    migrate(database_url)
    address = f"127.0.0.1:{free_port()}"
    env = service_env(
        INVENTORY_DATABASE_URL=database_url,
        INVENTORY_LISTEN_ADDRESS=address,
        INVENTORY_PROCESSES="2",
        INVENTORY_PIN_CPUS="true",
    )
    with service_process("inventory_svc.server", env, tmp_path / "inventory.log") as inventory:
        inventory.wait_until_serving(address)
        # That is one worker; the other may still be importing and would miss every call.
        worker_pids = wait_until_listening(inventory, workers=2)
        # Each worker keeps every thread of its own (gRPC's included) on one core of those
        # the server may use, a different one each where there are two.
        cores = sorted(os.sched_getaffinity(0))
        assigned = sorted(sorted(cores_of_threads(pid)) for pid in worker_pids)
        assert assigned == sorted([[cores[0]], [cores[1 % len(cores)]]])
        for _ in range(CONNECTIONS):  # the kernel spreads new connections over the processes
            with authorized_channel(address, mint(), OWN_CONNECTION) as channel:
                error = rpc_error(inventory_pb2_grpc.ItemServiceStub(channel).GetItem, pb.GetItemRequest(id=1))
                assert error.code() == grpc.StatusCode.NOT_FOUND
        metrics = inventory.metrics()
        inventory.stop()

    assert inventory.process.returncode == 0
    assert (
        metrics[
            (
                "grpc_server_handled_total",
                frozenset(
                    {
                        ("grpc_type", "unary"),
                        ("grpc_service", "inventory.v1.ItemService"),
                        ("grpc_method", "GetItem"),
                        ("grpc_code", "NOT_FOUND"),
                    }
                ),
            )
        ]
        == CONNECTIONS
    )
    lines = inventory.log_lines()
    serving_pids = {line["pid"] for line in lines if line.get("logger") == "access"}
    assert len(serving_pids) == 2
    assert {line["pid"] for line in lines if line["message"] == "inventory stopped"} == serving_pids


def cores_of_threads(pid: int) -> set[int]:
    cores: set[int] = set()
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            cores |= os.sched_getaffinity(int(thread.name))
        except ProcessLookupError:  # a short-lived thread that ended meanwhile
            pass
    return cores


def wait_until_listening(service: ServiceProcess, workers: int, timeout_s: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        pids = {line["pid"] for line in service.log_lines() if line["message"].startswith("inventory listening on ")}
        if len(pids) >= workers:
            return pids
        assert service.process.poll() is None, f"the service exited: {service.log_path.read_text()}"
        assert time.monotonic() < deadline, f"{len(pids)} of {workers} listen: {service.log_path.read_text()}"
        time.sleep(0.05)
