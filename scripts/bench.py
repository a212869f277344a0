"""Benchmark: calls/s, p50 and p99 of the services under load from h2load, as one table.

Load comes from h2load (Debian package nghttp2-client), a native HTTP/2 generator, so
that the client does not eat the CPU the servers need: it POSTs a length-prefixed gRPC
request body with `content-type: application/grpc` and `te: trailers`. h2load only
sees HTTP statuses, so each scenario's request is first sent once through a real gRPC
stub to prove it answers OK.

Usage: scripts/bench [--items N] [--seconds S] [--in-flight 1,8,32] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
from google.protobuf.message import Message

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc import migrations
from inventory_svc.domain import ItemFields, Money
from inventory_svc.server import RunningServer, build_engine, build_item_service, build_server
from inventory_svc.settings import InventorySettings
from servicekit.auth import AuthSettings, TokenIssuer
from servicekit.client import BearerTokenInterceptor

BENCH_AUTH = AuthSettings(secret="bench-secret-" + "b" * 40)


@dataclass
class Result:
    scenario: str
    in_flight: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int


class NullItemServicer(inventory_pb2_grpc.ItemServiceServicer):
    """The ceiling: a server that answers GetItem with a constant reply."""

    def __init__(self) -> None:
        self._reply = pb.GetItemResponse(item=pb.Item(id=1, sku="NULL", name="constant"))

    def GetItem(self, request: pb.GetItemRequest, context: grpc.ServicerContext) -> pb.GetItemResponse:
        return self._reply


def grpc_frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def run_h2load(address: str, method: str, request: Message, token: str, in_flight: int,
               seconds: float, workdir: Path) -> tuple[float, list[float], int]:
    body = workdir / "body.bin"
    body.write_bytes(grpc_frame(request))
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    command = [
        "h2load", f"--data={body}", "-c", "1", "-m", str(in_flight), "-t", "1",
        f"--duration={int(seconds)}s", "--warm-up-time=1s", f"--log-file={log}",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{address}{method}",
    ]
    if token:
        command[1:1] = ["-H", f"authorization: Bearer {token}"]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"bench: h2load failed:\n{finished.stdout}{finished.stderr}")
    output = finished.stdout
    durations_ms, failed = [], 0
    for line in log.read_text().splitlines():
        _start, status, duration_us = line.split("\t")
        if status != "200":
            failed += 1
        durations_ms.append(int(duration_us) / 1000)
    rate = next(float(part.split()[0]) for line in output.splitlines() if line.startswith("finished in")
                for part in line.split(", ") if part.endswith("req/s"))
    return rate, durations_ms, failed


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(fraction * 100) - 1]


def seed_items(settings: InventorySettings, count: int) -> None:
    engine = build_engine(settings)
    try:
        migrations.upgrade(engine)
        service = build_item_service(engine)
        for number in range(count):
            service.create_item(ItemFields(
                sku=f"BENCH-{number:07d}", name=f"Bench item {number}", category=f"cat-{number % 20}",
                brand=f"brand-{number % 7}", price=Money("USD", (number % 500 + 1) * 1_000_000_000),
                quantity=1_000_000, low_stock_threshold=10, customer_id=f"customer-{number % 100:03d}",
            ))
    finally:
        engine.dispose()


@dataclass
class Scenario:
    name: str
    start: Callable[[], Iterator[RunningServer]]
    method: str
    request: Message
    token: str


def serving_inventory(settings: InventorySettings, require_auth: bool) -> Callable[[], Iterator[RunningServer]]:
    def start() -> Iterator[RunningServer]:
        engine = build_engine(settings)
        running = build_server(settings, build_item_service(engine), require_auth=require_auth)
        running.server.start()
        try:
            yield running
        finally:
            running.server.stop(None).wait()
            engine.dispose()

    return start


def null_server(settings: InventorySettings) -> Callable[[], Iterator[RunningServer]]:
    def start() -> Iterator[RunningServer]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.max_workers))
        inventory_pb2_grpc.add_ItemServiceServicer_to_server(NullItemServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield RunningServer(server, port, None)  # type: ignore[arg-type]
        finally:
            server.stop(None).wait()

    return start


def check_answers_ok(address: str, scenario: Scenario) -> None:
    channel = grpc.insecure_channel(address)
    if scenario.token:
        channel = grpc.intercept_channel(channel, BearerTokenInterceptor(lambda: scenario.token))
    with channel:
        method = scenario.method.rsplit("/", 1)[1]
        getattr(inventory_pb2_grpc.ItemServiceStub(channel), method)(scenario.request, timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--in-flight", default="1,8,32")
    parser.add_argument("--json", type=Path, default=Path("bench-results/latest.json"))
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("bench: h2load is missing: apt-get install nghttp2-client")

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    settings = InventorySettings(database_url=f"sqlite:///{workdir / 'inventory.db'}",
                                 listen_address="127.0.0.1:0", auth=BENCH_AUTH)
    print(f"seeding {args.items} items ...", file=sys.stderr)
    seed_items(settings, args.items)
    token = TokenIssuer(BENCH_AUTH).mint("bench", ["inventory.read", "inventory.write"], 3600)
    get_item = pb.GetItemRequest(id=args.items // 2)
    scenarios = [
        Scenario("null server GetItem", null_server(settings), "/inventory.v1.ItemService/GetItem", get_item, ""),
        Scenario("GetItem, no auth", serving_inventory(settings, False), "/inventory.v1.ItemService/GetItem", get_item, ""),
        Scenario("GetItem", serving_inventory(settings, True), "/inventory.v1.ItemService/GetItem", get_item, token),
    ]
    results: list[Result] = []
    for scenario in scenarios:
        started = scenario.start()
        running = next(started)
        address = f"127.0.0.1:{running.port}"
        try:
            check_answers_ok(address, scenario)
            for in_flight in (int(n) for n in args.in_flight.split(",")):
                rate, durations, failed = run_h2load(address, scenario.method, scenario.request, scenario.token,
                                                     in_flight, args.seconds, workdir)
                results.append(Result(scenario.name, in_flight, rate, percentile(durations, 0.5),
                                      percentile(durations, 0.99), failed))
                print(f"  {scenario.name} @{in_flight}: {rate:,.0f}/s", file=sys.stderr)
        finally:
            started.close()

    print(f"\nmachine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
          f"{len(os.sched_getaffinity(0))} cores; SQLite; {args.items} items; {args.seconds:.0f} s each\n")
    print(f"| {'scenario':<24} | in flight | calls/s | p50 ms | p99 ms | failed |")
    print(f"|{'-' * 26}|-----------|---------|--------|--------|--------|")
    for r in results:
        print(f"| {r.scenario:<24} | {r.in_flight:>9} | {r.calls_per_s:>7,.0f} | {r.p50_ms:>6.2f} | {r.p99_ms:>6.2f} | {r.failed:>6} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
