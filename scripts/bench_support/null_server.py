"""The ceiling: a gRPC server that answers GetItem with a constant reply and does nothing
else (no interceptors, no database). Run as a process by the benchmark:

    python scripts/bench_support/null_server.py 127.0.0.1:PORT [MAX_WORKERS | aio]

The default is a threaded server (grpc.server with a thread pool of MAX_WORKERS, 16 as the
services had before grpc.aio); `aio` is the asyncio server (grpc.aio) the services use.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from concurrent import futures

import grpc

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc


class NullItemServicer(inventory_pb2_grpc.ItemServiceServicer):
    def __init__(self) -> None:
        self._reply = pb.GetItemResponse(item=pb.Item(id=1, sku="NULL", name="constant"))

    def GetItem(self, request: pb.GetItemRequest, context: grpc.ServicerContext) -> pb.GetItemResponse:
        return self._reply


class AsyncNullItemServicer(inventory_pb2_grpc.ItemServiceServicer):
    def __init__(self) -> None:
        self._reply = pb.GetItemResponse(item=pb.Item(id=1, sku="NULL", name="constant"))

    async def GetItem(
        self, request: pb.GetItemRequest, context: grpc.aio.ServicerContext[pb.GetItemRequest, pb.GetItemResponse]
    ) -> pb.GetItemResponse:
        return self._reply


async def serve_aio(address: str) -> None:
    server = grpc.aio.server()
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(AsyncNullItemServicer(), server)  # type: ignore[abstract]  # GetItem only
    server.add_insecure_port(address)
    await server.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await server.stop(1)


def main() -> None:
    address = sys.argv[1]
    if sys.argv[2:] == ["aio"]:
        asyncio.run(serve_aio(address))
        return
    max_workers = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    # The thread pool size the services had when they were threaded.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"))
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(NullItemServicer(), server)  # type: ignore[abstract]  # GetItem only
    server.add_insecure_port(address)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
