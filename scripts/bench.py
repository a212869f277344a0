"""Benchmark: the services under load from h2load, as one table (and JSON in var/bench/).

One run sets up its own data (`--items` over 100 customers, bulk-loaded into a schema made
by the real migrations), starts inventory and the CRM as processes the way scripts/run
does (console scripts, environment settings, auth on), and measures each workload at 1, 8
and 32 calls in flight: calls/s, p50, p99, errors, CPU per call; beside them, as the
ceiling, null gRPC servers that answer GetItem with a constant reply. At the end: each
server's resident memory, a check that AdjustQuantity lost no update, and on PostgreSQL
EXPLAIN ANALYZE of the list and search queries.

How the load is made (and its limits) is in scripts/bench_support/h2load.py and in the
notes printed under the table.

    scripts/bench                                  # 10,000 items, PostgreSQL when it answers on 127.0.0.1:5432
    scripts/bench --items 1000000 --reuse-data     # scale run; keeps the loaded data between runs
    scripts/bench --only 'GetItem|ListItems' --in-flight 8 --duration 10 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from bench_support import data, drivers, h2load, profile
from bench_support.explain import explain_list_items
from bench_support.services import (
    BIN,
    Process,
    Services,
    background_busy_percent,
    free_port,
    handled_delta,
    machine_busy_ticks,
    postgres_cpu_seconds,
    scrape_handled,
    service_env,
    wait_answering,
    wait_serving,
)
from google.protobuf.message import Message

from crm.v1 import crm_pb2
from inventory.v1 import inventory_pb2 as pb
from servicekit.jwt import AuthSettings, TokenIssuer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.raw_http2 import RawHttp2Client

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"
ITEM_SERVICE = "/inventory.v1.ItemService/"
CRM_SERVICE = "/crm.v1.CustomerItemsService/"
PAGE_SIZE = 50
BENCH_CUSTOMER = data.customer_id(7)
INVENTORY_ROLES = ["inventory.read", "inventory.write"]
AUTH_ON, AUTH_OFF = "GetItem, auth interceptor on", "GetItem, auth interceptor off"
AUTH_TURNS = 3
DOCS_PERFORMANCE = ROOT / "docs" / "performance.md"
TABLE_START, TABLE_END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


@dataclass
class Workload:
    name: str
    server: str  # the process that takes the calls
    load: h2load.Load
    reply_type: type[Message]
    # Checks a decoded reply (raises AssertionError) and describes it in a few words.
    check: Callable[[Any], str]
    # Processes whose CPU, metrics and memory belong to this workload.
    servers: tuple[str, ...] = ()
    # +1 or -1 per body: AdjustQuantity runs an exact number of calls and checks the stock after.
    deltas: dict[int, tuple[int, int]] = field(default_factory=dict)  # body index -> (item id, delta)
    note: str = ""
    # Other load held on the server while the cell runs (a context manager taking the cell's
    # seconds): what the measured calls must be served through.
    background: Callable[[float], ContextManager[Any]] | None = None


@dataclass
class Row:
    workload: str
    in_flight: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int | None  # None: the servers have no metrics to count them
    calls: int
    server_cpu_us_per_call: float | None
    db_cpu_us_per_call: float | None  # the PostgreSQL server's processes; None on SQLite (in the server)
    machine_busy_percent: float
    h2load_cpu_percent: float
    errors_by_code: dict[str, int] = field(default_factory=dict)
    # PostgreSQL: sessions opened (connections made) and transactions during the cell, warm-up included.
    db_sessions_opened: int | None = None
    db_transactions_per_call: float | None = None
    profiled: bool = False
    # Calls still in flight when h2load ended a timed cell: it resets them, and the servers
    # count them CANCELLED. Not errors of the service; left out of `errors`.
    cut_at_end: int = 0


# ---------------------------------------------------------------------------- setup


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=data.DEFAULT_ITEMS, help="items to load (default 10,000)")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of an empty database to use (never dropped); "
        "default: a fresh PostgreSQL database inventory_bench (inventory_bench_N for "
        "other --items) on 127.0.0.1:5432, else SQLite under var/bench/",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="keep the database when it already holds --items items (loading 1M takes minutes)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="INVENTORY_PROCESSES and CRM_PROCESSES, as the README advises: the cores (default here: %(default)s)",
    )
    parser.add_argument(
        "--pin-cpus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="INVENTORY_PIN_CPUS and CRM_PIN_CPUS: each server process on one core (default: on; "
        "this machine is the benchmark's own)",
    )
    parser.add_argument("--in-flight", default="1,8,32", help="calls in flight, comma-separated (default 1,8,32)")
    parser.add_argument("--only", help="run only the workloads whose name matches this regular expression")
    parser.add_argument(
        "--search", default=data.DEFAULT_SEARCH, help=f"the text search (default {data.DEFAULT_SEARCH!r})"
    )
    parser.add_argument(
        "--deep-page",
        type=int,
        default=2000,
        help="the ListItems page compared with page 1 (default 2,000, or the last page there is)",
    )
    parser.add_argument(
        "--max-h2load",
        type=int,
        default=32,
        help="h2load processes per cell at most; the calls in flight are split over them (default 32)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of the servers during each cell at --profile-in-flight",
    )
    parser.add_argument("--profile-in-flight", type=int, default=8)
    parser.add_argument(
        "--explain", action="store_true", help="print EXPLAIN ANALYZE (always in var/bench/explain.txt)"
    )
    parser.add_argument(
        "--drivers",
        action="store_true",
        help="then compare database drivers from one asyncio process on the same data "
        "(scripts/bench_support/drivers.py, 3 turns of --duration) and print its table",
    )
    parser.add_argument("--json", type=Path, default=VAR / "latest.json")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"then put this run's table into {DOCS_PERFORMANCE.relative_to(ROOT)}, between its bench:table markers",
    )
    parser.add_argument(
        "--compare", type=Path, help="a JSON of an earlier run (e.g. at 10,000 items): adds its calls/s and the ratio"
    )
    return parser.parse_args()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_database(args: argparse.Namespace, env: dict[str, str]) -> data.Database:
    database = data.choose_database(args.database_url, VAR, args.items)
    existing = data.item_count(database)
    if args.reuse_data and existing == args.items:
        say(f"reusing the {existing:,} items in {database.description}")
        data.migrate(database, env)
        return database
    if database.owned:
        data.recreate(database)
    elif existing:
        raise SystemExit(
            f"bench: {database.description} holds {existing:,} items: give an empty database, "
            f"or --reuse-data with --items {existing}"
        )
    data.migrate(database, env)
    say(f"loading {args.items:,} items into {database.description} ...")
    started = time.monotonic()
    data.load_items(database, args.items, progress=say)
    say(f"loaded in {time.monotonic() - started:.1f} s")
    return database


def start_servers(database: data.Database, env: dict[str, str], log_dir: Path) -> tuple[Services, dict[str, Process]]:
    services = Services()
    processes: dict[str, Process] = {}
    try:
        for name, mode in (("null server (threads)", "16"), ("null server (grpc.aio)", "aio")):
            address = f"127.0.0.1:{free_port()}"
            command = [sys.executable, str(ROOT / "scripts/bench_support/null_server.py"), address, mode]
            processes[name] = services.start(
                name.replace(" ", "-").replace("(", "").replace(")", ""), command, env, address, log_dir
            )
        for name, auth in ((AUTH_ON, "on"), (AUTH_OFF, "off")):
            address, metrics_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            command = [
                sys.executable,
                str(ROOT / "scripts/bench_support/auth_cost_server.py"),
                address,
                auth,
                metrics_address,
            ]
            processes[name] = services.start(
                f"inventory-auth-{auth}",
                command,
                {**env, "INVENTORY_DATABASE_URL": database.url},
                address,
                log_dir,
                metrics_address,
            )
        inventory_address, crm_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        inventory_metrics, crm_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        processes["inventory"] = services.start(
            "inventory",
            [str(BIN / "inventory-server")],
            {
                **env,
                "INVENTORY_DATABASE_URL": database.url,
                "INVENTORY_LISTEN_ADDRESS": inventory_address,
                "INVENTORY_METRICS_ADDRESS": inventory_metrics,
            },
            inventory_address,
            log_dir,
            inventory_metrics,
        )
        processes["crm"] = services.start(
            "crm",
            [str(BIN / "crm-server")],
            {
                **env,
                "CRM_LISTEN_ADDRESS": crm_address,
                "CRM_INVENTORY_TARGET": inventory_address,
                "CRM_METRICS_ADDRESS": crm_metrics,
            },
            crm_address,
            log_dir,
            crm_metrics,
        )
        null_request = pb.GetItemRequest(id=1).SerializeToString()
        for name in ("null server (threads)", "null server (grpc.aio)"):
            wait_answering(processes[name], ITEM_SERVICE + "GetItem", null_request)
        for name in ("inventory", "crm", AUTH_ON, AUTH_OFF):
            wait_serving(processes[name])
    except BaseException:
        services.stop()
        raise
    return services, processes


# ---------------------------------------------------------------------------- workloads


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def page_token_for(address: str, token: str, request: pb.ListItemsRequest, page: int) -> str:
    """The page token of page `page`, by following next_page_token from page 1."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            ITEM_SERVICE + "ListItems",
            request_serializer=pb.ListItemsRequest.SerializeToString,
            response_deserializer=pb.ListItemsResponse.FromString,
        )
        current = pb.ListItemsRequest()
        current.CopyFrom(request)
        for _ in range(page - 1):
            reply = call(current, metadata=[("authorization", f"Bearer {token}")], timeout=30)
            current.page_token = reply.next_page_token
            _expect(bool(reply.next_page_token), "ran out of pages")
        return current.page_token


def competing_load(
    address: str, load: h2load.Load, in_flight: int, workdir: Path
) -> Callable[[float], ContextManager[Any]]:
    """Another client's calls (`load` at `in_flight`, from its own h2load) for as long as a cell runs."""

    @contextmanager
    def running(seconds: float) -> Iterator[None]:
        body = workdir / "competing-body.bin"
        body.write_bytes(load.bodies[0])
        command = [
            "h2load",
            f"--data={body}",
            "-c",
            "1",
            "-t",
            "1",
            "-m",
            str(in_flight),
            f"--duration={seconds + 2:g}s",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            f"authorization: Bearer {load.token}",
            f"http://{address}{load.path}",
        ]
        popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.5)  # its calls are in flight before the measured ones start
            yield
        finally:
            output = popen.communicate()[0]
            say(f"    competing load: {h2load.summary(output)}")

    return running


def header_only_streams(address: str, connections: int, streams_each: int) -> Callable[[float], ContextManager[Any]]:
    """A client without a token that opens `streams_each` request HEADERS on each of
    `connections` connections and never sends a message, for as long as a cell runs."""

    @contextmanager
    def holding(_seconds: float) -> Iterator[None]:
        host, port = address.rsplit(":", 1)
        clients = [RawHttp2Client(host, int(port)) for _ in range(connections)]
        try:
            held = sum(len(client.open_header_only_streams(streams_each)) for client in clients)
            say(f"    holding {held} header-only streams over {connections} connections")
            yield
        finally:
            for client in clients:
                client.close()

    return holding


def build_workloads(
    args: argparse.Namespace, fixtures: data.Fixtures, tokens: dict[str, str], processes: dict[str, Process]
) -> list[Workload]:
    frame = h2load.grpc_frame
    inventory_token, customer_token = tokens["inventory"], tokens["customer"]
    categories = sorted(fixtures.category_sizes)
    list_bodies = [frame(pb.ListItemsRequest(category=c, page_size=PAGE_SIZE)) for c in categories]
    smallest = min(fixtures.category_sizes.values())
    deep_page = max(1, min(args.deep_page, math.ceil(smallest / PAGE_SIZE)))
    adjust_bodies, deltas = [], {}
    for index in range(2 * len(fixtures.adjust_item_ids)):
        item_id, delta = fixtures.adjust_item_ids[index // 2], (1 if index % 2 == 0 else -1)
        adjust_bodies.append(frame(pb.AdjustQuantityRequest(id=item_id, delta=delta)))
        deltas[index] = (item_id, delta)

    def get_item(reply: pb.GetItemResponse) -> str:
        _expect(reply.item.id > 0, "no item")
        return f"item {reply.item.id}"

    def page_of(expected: int | None) -> Callable[[Any], str]:
        def check(reply: Any) -> str:
            if expected is not None:
                _expect(len(reply.items) == expected, f"{len(reply.items)} items, not {expected}")
            _expect(len(reply.items) > 0, "no items")
            return f"{len(reply.items)} items of {reply.total_size}"

        return check

    workloads = [
        Workload(
            "null server (threads) GetItem",
            "null server (threads)",
            h2load.Load(ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=1))]),
            pb.GetItemResponse,
            get_item,
            ("null server (threads)",),
            note="grpc.server + 16 threads, constant reply, no interceptors",
        ),
        Workload(
            "null server (grpc.aio) GetItem",
            "null server (grpc.aio)",
            h2load.Load(ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=1))]),
            pb.GetItemResponse,
            get_item,
            ("null server (grpc.aio)",),
            note="grpc.aio server, constant reply",
        ),
        Workload(
            "GetItem",
            "inventory",
            h2load.Load(
                ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=i)) for i in fixtures.item_ids], inventory_token
            ),
            pb.GetItemResponse,
            get_item,
            ("inventory",),
            note=f"{len(fixtures.item_ids)} random active ids, one per h2load process",
        ),
        *(
            Workload(
                name,
                name,
                h2load.Load(
                    ITEM_SERVICE + "GetItem",
                    [frame(pb.GetItemRequest(id=i)) for i in fixtures.item_ids],
                    inventory_token,
                ),
                pb.GetItemResponse,
                get_item,
                (name,),
                note="one process, no item cache: every call reads the database; only the JWT interceptor differs",
            )
            for name in (AUTH_ON, AUTH_OFF)
        ),
        Workload(
            "GetItem while 1,000 header-only streams are held",
            "inventory",
            h2load.Load(
                ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=i)) for i in fixtures.item_ids], inventory_token
            ),
            pb.GetItemResponse,
            get_item,
            ("inventory",),
            background=header_only_streams(processes["inventory"].address, 10, 100),
            note="while a client with no token holds 10 connections x 100 streams whose request never comes",
        ),
        Workload(
            "GetItem of subject B, subject A searching",
            "inventory",
            h2load.Load(
                ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=i)) for i in fixtures.item_ids], inventory_token
            ),
            pb.GetItemResponse,
            get_item,
            ("inventory",),
            background=competing_load(
                processes["inventory"].address,
                h2load.Load(
                    ITEM_SERVICE + "ListItems",
                    [frame(pb.ListItemsRequest(query=args.search, page_size=500))],
                    tokens["other subject"],
                ),
                16,
                VAR / "work",
            ),
            note="while another token subject keeps 16 searches of 500 items in flight (its errors not counted)",
        ),
        Workload(
            "ListItems category",
            "inventory",
            h2load.Load(ITEM_SERVICE + "ListItems", list_bodies, inventory_token),
            pb.ListItemsResponse,
            page_of(PAGE_SIZE),
            ("inventory",),
            note="page 1 of 50, one category per h2load process",
        ),
        Workload(
            f"ListItems category page {deep_page}",
            "inventory",
            h2load.Load(ITEM_SERVICE + "ListItems", [], inventory_token),
            pb.ListItemsResponse,
            page_of(None),
            ("inventory",),
            note=f"page {deep_page} of category {categories[0]!r} (token got by following next_page_token)",
        ),
        Workload(
            f"ListItems search {args.search!r}",
            "inventory",
            h2load.Load(
                ITEM_SERVICE + "ListItems",
                [frame(pb.ListItemsRequest(query=args.search, page_size=PAGE_SIZE))],
                inventory_token,
            ),
            pb.ListItemsResponse,
            page_of(None),
            ("inventory",),
            note="ListItems query= (substring of name, sku, brand, category), page size 50",
        ),
        Workload(
            "AdjustQuantity +-1",
            "inventory",
            h2load.Load(ITEM_SERVICE + "AdjustQuantity", adjust_bodies, inventory_token),
            pb.AdjustQuantityResponse,
            lambda reply: f"quantity {reply.item.quantity}",
            ("inventory",),
            deltas=deltas,
            note="item k: +1 from one h2load process, -1 from the next; no request_id",
        ),
        Workload(
            "CRM GetMyItem",
            "crm",
            h2load.Load(
                CRM_SERVICE + "GetMyItem",
                [frame(crm_pb2.GetMyItemRequest(id=i)) for i in fixtures.customer_item_ids],
                customer_token,
            ),
            crm_pb2.GetMyItemResponse,
            lambda reply: f"item {reply.item.id}",
            ("crm", "inventory"),
            note=f"{BENCH_CUSTOMER}'s own items ({len(fixtures.customer_item_ids)} ids), through inventory",
        ),
        Workload(
            "CRM ListMyItems",
            "crm",
            h2load.Load(
                CRM_SERVICE + "ListMyItems", [frame(crm_pb2.ListMyItemsRequest(page_size=PAGE_SIZE))], customer_token
            ),
            crm_pb2.ListMyItemsResponse,
            page_of(min(PAGE_SIZE, fixtures.customer_items)),
            ("crm", "inventory"),
            note=f"page 1 of 50 of {BENCH_CUSTOMER}'s {fixtures.customer_items} items",
        ),
    ]
    if args.only:
        pattern = re.compile(args.only, re.IGNORECASE)
        workloads = [w for w in workloads if pattern.search(w.name)]
    for workload in workloads:
        if "page" in workload.name and not workload.load.bodies:
            first = pb.ListItemsRequest(category=categories[0], page_size=PAGE_SIZE)
            say(f"following next_page_token to page {deep_page} ...")
            token = page_token_for(processes["inventory"].address, inventory_token, first, deep_page)
            deep = pb.ListItemsRequest(category=categories[0], page_size=PAGE_SIZE, page_token=token)
            workload.load = h2load.Load(workload.load.path, [frame(deep)], workload.load.token)
    return workloads


def spot_check(workload: Workload, address: str) -> str:
    """Sends each body once through a real gRPC client and checks the reply: h2load cannot."""
    described = set()
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(workload.load.path)
        metadata = [("authorization", f"Bearer {workload.load.token}")] if workload.load.token else None
        for body in workload.load.bodies:
            try:
                reply = workload.reply_type.FromString(call(body[5:], metadata=metadata, timeout=30))
            except grpc.RpcError as error:
                raise SystemExit(f"bench: {workload.name} answers {error.code().name}: {error.details()}") from None
            try:
                described.add(workload.check(reply))
            except AssertionError as error:
                raise SystemExit(f"bench: {workload.name} answers wrongly: {error}") from None
    return min(described) + (f" (and {len(described) - 1} more)" if len(described) > 1 else "")


# ---------------------------------------------------------------------------- measuring


def _errors(
    servers: list[Process],
    deltas: list[dict[tuple[str, str, str], int] | None],
    cut_at_end: int,
    only_method: str | None = None,
) -> tuple[int | None, dict[str, int], int, int]:
    """(non-OK calls of the first server, every server's non-OK calls by method and code, OK
    calls of the first server, calls cut at the end) from the servers' metrics; None when a
    server has none. The first server is the one called: a CRM call that failed in inventory
    fails at the CRM too. Up to `cut_at_end` CANCELLED calls per server are the ones h2load
    reset when the cell ended, not errors."""
    if any(delta is None for delta in deltas):
        return None, {}, 0, 0
    by_code: dict[str, int] = {}
    errors = ok = cut = 0
    for index, (process, delta) in enumerate(zip(servers, deltas, strict=True)):
        for (_service, method, code), count in (delta or {}).items():
            if only_method is not None and method != only_method:
                continue  # a competing load's calls, not the measured ones
            if code == "OK":
                ok += count if index == 0 else 0
                continue
            if code == "CANCELLED":
                reset = min(count, cut_at_end)
                cut += reset if index == 0 else 0
                count -= reset
                if not count:
                    continue
            by_code[f"{process.name} {method} {code}"] = by_code.get(f"{process.name} {method} {code}", 0) + count
            errors += count if index == 0 else 0
    return errors, by_code, ok, cut


def measure(
    args: argparse.Namespace,
    workload: Workload,
    in_flight: int,
    processes: dict[str, Process],
    database: data.Database,
    workdir: Path,
    adjust_log: list[dict[str, Any]],
    profiles: list[tuple[str, Path]],
    counters: data.PostgresCounters | None,
) -> Row:
    target = processes[workload.server]
    servers = [processes[name] for name in workload.servers]
    run = {"max_processes": args.max_h2load}
    if workload.deltas:
        # Warm up (uncounted), then an exact number of calls, each answered before h2load ends,
        # so that the stock after the run can be checked against the calls that succeeded.
        warm = h2load.run(target.address, workload.load, in_flight, workdir, duration_s=args.warmup, **run)
        h2load.settle()
        calls = max(int(warm.calls_per_s * args.duration), 20 * in_flight)
        touched = sorted(
            {workload.deltas[i % len(workload.load.bodies)][0] for i in range(min(in_flight, args.max_h2load))}
        )
        stock_before = data.quantities(database, touched)
    metrics_before = [scrape_handled(p.metrics_address) for p in servers]
    cpu_before = [p.cpu_seconds() for p in servers]
    db_before = postgres_cpu_seconds() if database.kind == "postgresql" else None
    counted_before = counters.read() if counters else None
    busy_before = machine_busy_ticks()
    started = time.monotonic()
    profiling = (
        args.profile
        and in_flight == args.profile_in_flight
        and not workload.server.startswith("null")
        and not workload.server.startswith("GetItem, auth")
    )
    spies = []
    if profiling:
        seconds = args.duration + (0 if workload.deltas else args.warmup)
        for process in servers:
            output = VAR / "profiles" / f"{_slug(workload.name)}-{in_flight}-{process.name}.txt"
            output.parent.mkdir(parents=True, exist_ok=True)
            spies.append((process.name, output, profile.start(process.pid, seconds, output)))
    with workload.background(args.warmup + args.duration) if workload.background else contextlib.nullcontext():
        if workload.deltas:
            result = h2load.run(target.address, workload.load, in_flight, workdir, calls=calls, **run)
        else:
            result = h2load.run(
                target.address, workload.load, in_flight, workdir, duration_s=args.duration, warmup_s=args.warmup, **run
            )
    wall = time.monotonic() - started
    h2load.settle(1.1 if counters else 0.3)  # PostgreSQL publishes a busy backend's counts once a second
    busy_after = machine_busy_ticks()
    cpu_used = sum(p.cpu_seconds() for p in servers) - sum(cpu_before)
    db_after = postgres_cpu_seconds() if db_before is not None else None
    metrics_after = [scrape_handled(p.metrics_address) for p in servers]
    counted_after = counters.read() if counters else None
    for name, output, spy in spies:
        spy.communicate()
        if output.exists():
            profiles.append((f"{workload.name} @{in_flight}, {name}", output))
    deltas = [handled_delta(before, after) for before, after in zip(metrics_before, metrics_after, strict=True)]
    cut = 0
    if not servers[0].metrics_address:  # the null servers count nothing: h2load's failures are all we know
        errors, by_code, ok = result.failed, {}, result.calls
    else:
        # A cell of exactly counted calls (AdjustQuantity) waits for every answer: nothing is cut.
        measured_method = workload.load.path.rsplit("/", 1)[1] if workload.background else None
        errors, by_code, ok, cut = _errors(servers, deltas, 0 if workload.deltas else in_flight, measured_method)
        if errors is not None:
            errors += result.failed
    cores = cpu_used / wall
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1) * 100
    row = Row(
        workload.name,
        in_flight,
        result.calls_per_s,
        h2load.percentile(result.latencies_ms, 0.50),
        h2load.percentile(result.latencies_ms, 0.99),
        errors,
        result.calls,
        cores / result.calls_per_s * 1e6 if result.calls_per_s else None,
        (db_after - db_before) / wall / result.calls_per_s * 1e6
        if db_before is not None
        and db_after is not None
        and result.calls_per_s
        and not workload.server.startswith("null")
        else None,
        busy,
        result.cpu_seconds / wall * 100,
        by_code,
        profiled=profiling,
        cut_at_end=cut,
    )
    if counted_before and counted_after and not workload.server.startswith("null"):
        row.db_sessions_opened = counted_after["sessions"] - counted_before["sessions"]
        all_calls = ok if servers[0].metrics_address and errors is not None else None
        if all_calls:  # the servers' own count: h2load does not log the warm-up's calls
            transactions = counted_after["transactions"] - counted_before["transactions"]
            row.db_transactions_per_call = transactions / (all_calls + (errors or 0))
    if workload.deltas:
        adjust_log.append(check_adjustments(workload, in_flight, result, stock_before, database, errors, ok))
    return row


def auth_in_turns(
    by_name: dict[str, Workload],
    in_flight: int,
    measured: Callable[[Workload, int], Row],
    auth_turns: list[dict[str, Any]],
) -> tuple[Row, Row]:
    """GetItem with and without the JWT interceptor, in AUTH_TURNS turns, which goes first
    alternating: the machine drifts between two cells more than the interceptor costs.
    Returns the rows of the turn with the median ratio, for the table."""
    turns = []
    for turn in range(AUTH_TURNS):
        order = (AUTH_ON, AUTH_OFF) if turn % 2 == 0 else (AUTH_OFF, AUTH_ON)
        cells = {name: measured(by_name[name], in_flight) for name in order}
        with_auth, without = cells[AUTH_ON], cells[AUTH_OFF]
        errors = (with_auth.errors or 0) + (without.errors or 0)
        auth_turns.append(
            {"in_flight": in_flight, "with": with_auth.calls_per_s, "without": without.calls_per_s, "errors": errors}
        )
        ratio = with_auth.calls_per_s / without.calls_per_s if without.calls_per_s else 0.0
        turns.append((ratio, with_auth, without))
    turns.sort(key=lambda turn: turn[0])
    _, with_auth, without = turns[len(turns) // 2]
    return with_auth, without


def check_adjustments(
    workload: Workload,
    in_flight: int,
    result: h2load.LoadResult,
    before: dict[int, int],
    database: data.Database,
    errors: int | None,
    ok: int,
) -> dict[str, Any]:
    expected = dict(before)
    for body_index, answered in result.answered_by_body:
        item_id, delta = workload.deltas[body_index]
        expected[item_id] += delta * answered
    after = data.quantities(database, list(before))
    lost = sum(abs(expected[i] - after[i]) for i in before)
    # Exact when every answered call was OK (no call errored, and the servers counted as many OK calls).
    exact = errors == 0 and ok == result.calls
    return {
        "in_flight": in_flight,
        "items": len(before),
        "calls": result.calls,
        "errors": errors,
        "server_ok": ok,
        "expected_total": sum(expected.values()),
        "actual_total": sum(after.values()),
        "lost_updates": lost,
        "exact": exact,
    }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False).stdout.strip(),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


NULL_AIO = "null server (grpc.aio) GetItem"


def table(rows: list[Row], earlier: dict[str, dict[int, float]] | None = None) -> str:
    """Each row also as a share of the null grpc.aio server at the same calls in flight: the
    machine's ceiling for a gRPC call in Python, measured in the same run."""
    ceiling = {r.in_flight: r.calls_per_s for r in rows if r.workload == NULL_AIO}
    header = [
        "workload",
        "in flight",
        "calls/s",
        "÷ null aio",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU µs/call",
        "PostgreSQL CPU µs/call",
        "new DB conns",
        "machine busy %",
        "h2load CPU %",
    ]
    if earlier is not None:
        header += ["earlier calls/s", "now / earlier"]
    body = [
        [
            r.workload + (" (profiled)" if r.profiled else ""),
            str(r.in_flight),
            _fmt(r.calls_per_s, 0),
            _fmt(r.calls_per_s / ceiling[r.in_flight]) if ceiling.get(r.in_flight) else "n/a",
            _fmt(r.p50_ms),
            _fmt(r.p99_ms),
            "n/a" if r.errors is None else str(r.errors),
            _fmt(r.server_cpu_us_per_call, 0),
            _fmt(r.db_cpu_us_per_call, 0),
            "n/a" if r.db_sessions_opened is None else str(r.db_sessions_opened),
            _fmt(r.machine_busy_percent, 0),
            _fmt(r.h2load_cpu_percent, 0),
        ]
        + ([] if earlier is None else _comparison(earlier.get(_base_name(r.workload), {}).get(r.in_flight), r))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {0}

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i not in left else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def _base_name(workload: str) -> str:
    """Without the page number, which depends on the number of items."""
    return re.sub(r" page \d+$", " page N", workload)


def _comparison(earlier: float | None, row: Row) -> list[str]:
    if not earlier:
        return ["n/a", "n/a"]
    return [_fmt(earlier, 0), f"{row.calls_per_s / earlier:.2f}"]


def with_bench_table(document: str, summary: list[str]) -> str:
    """`document` with the text between the bench markers replaced by a run's summary: the
    table as printed, each other line as a list item (Markdown would run them together)."""
    start, end = document.find(TABLE_START), document.find(TABLE_END)
    if start == -1 or end < start:
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} in the document")
    block = "\n".join(line if not line or line.startswith("|") else f"- {line}" for line in summary)
    return f"{document[: start + len(TABLE_START)]}\n{block.strip()}\n{document[end:]}"


def read_earlier(path: Path) -> dict[str, dict[int, float]]:
    earlier: dict[str, dict[int, float]] = {}
    for result in json.loads(path.read_text())["results"]:
        earlier.setdefault(_base_name(result["workload"]), {})[result["in_flight"]] = result["calls_per_s"]
    return earlier


NOTES = [
    (
        "Load: h2load (nghttp2) POSTs the length-prefixed request with content-type: application/grpc and "
        "te: trailers. It sends one fixed body per process, so a workload with several requests runs one h2load "
        "process per call in flight (up to --max-h2load), each with one body of the workload's pool (random ids, "
        "categories, +1/-1) and one connection; a pool is a fixed sample, not a fresh random id per call."
    ),
    (
        "Errors: h2load sees only HTTP statuses (a gRPC error is HTTP 200), so errors are the non-OK calls in the "
        "servers' grpc_server_handled_total over the cell (warm-up included), plus h2load's failed streams, less "
        "the calls h2load itself resets when a timed cell ends (at most one per call in flight, counted CANCELLED "
        "by the server and listed apart); 'n/a' when a server has no /metrics (the null servers). "
        "Each body is also sent once through a real gRPC client first."
    ),
    "Latency: per call from h2load's log, from sending the request to the end of the response (trailers).",
    (
        "CPU: server CPU µs/call is the user+system time of the servers of the workload (inventory, and the CRM "
        "for CRM calls) per call, PostgreSQL CPU µs/call that of the local PostgreSQL server's processes; "
        "machine busy % is the share of all cores busy with anything (100 = every core); h2load CPU % is of one core. "
        "new DB conns: PostgreSQL sessions opened during the cell (pg_stat_database.sessions; warm-up included): "
        "anything above 0 once the pool is warm means connections are opened and closed per call."
    ),
    (
        "AdjustQuantity: after a warm-up, each cell sends an exact number of calls (h2load -n, every call answered "
        "before it ends), then checks that each touched item's quantity moved by (+1 calls OK) - (-1 calls OK). "
        "Bodies carry no request_id: a fixed body with one would be a replay, answered without a change."
    ),
]


def main() -> None:
    args = parse_args()
    if not h2load.available():
        raise SystemExit(f"bench: {h2load.INSTALL_HINT}")
    in_flights = [int(n) for n in args.in_flight.split(",")]
    if args.write_docs:
        with_bench_table(DOCS_PERFORMANCE.read_text(), [])  # fails now, not after the run, without markers
    VAR.mkdir(parents=True, exist_ok=True)
    log_dir, workdir = VAR / "logs", VAR / "work"
    log_dir.mkdir(exist_ok=True)
    secret_file = VAR / "jwt-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    env = service_env(secret_file)
    env.setdefault("INVENTORY_PROCESSES", str(args.processes))
    env.setdefault("CRM_PROCESSES", str(args.processes))
    env.setdefault("INVENTORY_PIN_CPUS", str(args.pin_cpus).lower())
    env.setdefault("CRM_PIN_CPUS", str(args.pin_cpus).lower())
    issuer = TokenIssuer(AuthSettings(secret=secret_file.read_text().strip()))
    tokens = {
        "inventory": issuer.mint("bench", INVENTORY_ROLES, 6 * 3600),
        "other subject": issuer.mint("bench-other", INVENTORY_ROLES, 6 * 3600),
        "customer": issuer.mint(BENCH_CUSTOMER, ["customer"], 6 * 3600),
    }

    database = prepare_database(args, env)
    fixtures = data.read_fixtures(database, pool=32, customer=BENCH_CUSTOMER)
    started_at = datetime.now(UTC)
    services, processes = start_servers(database, env, log_dir)
    background = [background_busy_percent()]
    rows: list[Row] = []
    auth_turns: list[dict[str, Any]] = []
    adjust_log: list[dict[str, Any]] = []
    profiles: list[tuple[str, Path]] = []
    checks: dict[str, str] = {}
    counters = data.PostgresCounters(database) if database.kind == "postgresql" else None
    try:
        workloads = build_workloads(args, fixtures, tokens, processes)
        for workload in workloads:
            checks[workload.name] = spot_check(workload, processes[workload.server].address)

        def measured(workload: Workload, in_flight: int) -> Row:
            row = measure(args, workload, in_flight, processes, database, workdir, adjust_log, profiles, counters)
            say(
                f"  {row.workload} @{in_flight}: {row.calls_per_s:,.0f}/s, p50 {_fmt(row.p50_ms)} ms, "
                f"p99 {_fmt(row.p99_ms)} ms, errors {row.errors if row.errors is not None else 'n/a'}"
            )
            return row

        by_name = {workload.name: workload for workload in workloads}
        in_turns = AUTH_ON in by_name and AUTH_OFF in by_name
        for workload in workloads:
            if in_turns and workload.name == AUTH_OFF:
                continue  # measured in turns with AUTH_ON
            for in_flight in in_flights:
                if in_turns and workload.name == AUTH_ON:
                    rows.extend(auth_in_turns(by_name, in_flight, measured, auth_turns))
                else:
                    rows.append(measured(workload, in_flight))
        order = [workload.name for workload in workloads]
        rows.sort(key=lambda row: (order.index(row.workload), in_flights.index(row.in_flight)))
        memory = {p.name: p.memory_mb() for p in processes.values()}
        background.append(background_busy_percent())
        ledger = None
        if adjust_log:
            touched = fixtures.adjust_item_ids
            sums, now = data.ledger_sums(database, touched), data.quantities(database, touched)
            ledger = {"items": len(touched), "agree": all(sums.get(i) == now[i] for i in touched)}
    finally:
        exit_codes = services.stop()
        if counters:
            counters.close()

    explain: list[dict[str, str]] = []
    if database.kind == "postgresql":
        categories = sorted(fixtures.category_sizes)
        requests = {
            "ListItems category page 1": pb.ListItemsRequest(category=categories[0], page_size=PAGE_SIZE),
            f"ListItems search {args.search!r}": pb.ListItemsRequest(query=args.search, page_size=PAGE_SIZE),
        }
        deep = next((w for w in workloads if "page" in w.name and w.load.bodies), None)
        if deep is not None:
            requests[deep.name] = pb.ListItemsRequest.FromString(deep.load.bodies[0][5:])
        for name, request in requests.items():
            for statement, plan in explain_list_items(database, request, PAGE_SIZE):
                explain.append({"query": name, "sql": statement, "plan": plan})

    meta = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": machine(),
        "database": database.description,
        "items": args.items,
        "customers": data.CUSTOMERS,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "max_h2load": args.max_h2load,
        "search": args.search,
        "processes": {"inventory": env["INVENTORY_PROCESSES"], "crm": env["CRM_PROCESSES"]},
        "pin_cpus": {"inventory": env["INVENTORY_PIN_CPUS"], "crm": env["CRM_PIN_CPUS"]},
        "background_busy_percent": {"before": background[0], "after": background[1]},
    }
    lines = [
        f"date: {meta['date']}",
        (
            f"machine: {meta['machine']['nproc']} cores ({meta['machine']['cpu_model']}), "
            f"Linux {meta['machine']['kernel']}, Python {meta['machine']['python']}, "
            f"grpcio {meta['machine']['grpcio']}, {meta['machine']['h2load']}"
        ),
        (
            f"database: {database.description}; items: {args.items:,} over {data.CUSTOMERS} customers; "
            f"{args.duration:g} s per cell after {args.warmup:g} s of warm-up"
        ),
        (
            f"servers: INVENTORY_PROCESSES={env['INVENTORY_PROCESSES']}, CRM_PROCESSES={env['CRM_PROCESSES']}, "
            f"INVENTORY_PIN_CPUS={env['INVENTORY_PIN_CPUS']}, CRM_PIN_CPUS={env['CRM_PIN_CPUS']}, "
            "other settings at their defaults"
        ),
        f"other load on the machine (1 s idle sample): {background[0]:.0f}% before, {background[1]:.0f}% after"
        + ("  <- WARNING: something else was running; the numbers are low" if max(background) > 10 else ""),
        "",
        table(rows, read_earlier(args.compare) if args.compare else None),
        "",
        "resident memory per server process (MB, now / peak): "
        + ", ".join(f"{name} {m.get('VmRSS', 0):.0f} / {m.get('VmHWM', 0):.0f}" for name, m in memory.items()),
    ]
    for entry in adjust_log:
        verdict = "exact" if entry["exact"] else "NOT exact: some calls errored, so the expected stock is uncertain"
        lines.append(
            f"AdjustQuantity @{entry['in_flight']}: {entry['calls']:,} calls on {entry['items']} items, "
            f"lost updates: {entry['lost_updates']} ({verdict})"
        )
    if ledger is not None:
        lines.append(
            f"ledger: the movements of the {ledger['items']} adjusted items "
            f"{'add up to their quantities' if ledger['agree'] else 'DO NOT add up to their quantities'}"
        )
    cut = [f"{r.workload} @{r.in_flight} x{r.cut_at_end}" for r in rows if r.cut_at_end]
    if cut:
        lines.append(
            "cut when h2load ended the cell (reset by it, CANCELLED at the server; not errors): " + ", ".join(cut)
        )
    for in_flight in sorted({turn["in_flight"] for turn in auth_turns}):
        # A turn with failed calls has no honest speed: it is shown, not counted.
        turns = [turn for turn in auth_turns if turn["in_flight"] == in_flight]
        ratios = [turn["with"] / turn["without"] for turn in turns if turn["without"] and not turn["errors"]]
        shown = ", ".join(
            (f"{turn['with'] / turn['without']:.2f}" if turn["without"] else "n/a")
            + (f" ({turn['errors']} errors: not counted)" if turn["errors"] else "")
            for turn in turns
        )
        median = f"median {statistics.median(ratios):.2f}" if ratios else "no turn without errors"
        lines.append(
            f"auth interceptor @{in_flight}: GetItem with it / without it, in {len(turns)} turns: "
            f"{shown} ({median}; the table shows the median turn)"
        )
    errors = {f"{r.workload} @{r.in_flight}": r.errors_by_code for r in rows if r.errors_by_code}
    for cell, by_code in errors.items():
        lines.append(f"errors in {cell}: " + ", ".join(f"{k} x{v}" for k, v in by_code.items()))
    summary = list(lines)
    lines += ["", "workloads:"] + [f"  {w.name}: {w.note}; checked: {checks.get(w.name, '')}" for w in workloads]
    lines += ["", "notes:"] + [f"  - {note}" for note in NOTES]
    if any(code not in (0, None) for code in exit_codes.values()) or None in exit_codes.values():
        lines.append(f"server exit codes after SIGTERM: {exit_codes}")
    print("\n".join(lines))

    explain_text = "\n\n".join(f"-- {e['query']}\n{e['sql']}\n{e['plan']}" for e in explain)
    if explain:
        (VAR / "explain.txt").write_text(explain_text + "\n")
        if args.explain or args.items >= 100_000:
            print("\nEXPLAIN (ANALYZE, BUFFERS) of the SQL the repository sends (caught from its own calls):\n")
            print(explain_text)
        else:
            print(f"\nEXPLAIN ANALYZE of the list and search queries: {VAR / 'explain.txt'} (--explain prints it)")
    summaries = []
    for title, path in profiles:
        summary = profile.summarise(path)
        summaries.append({"title": title, "file": str(path), **asdict(summary)})
        print("\n" + profile.format_summary(title, summary) + f"\n  (collapsed stacks: {path}; open in speedscope)")

    if args.drivers and database.kind == "postgresql":
        say("comparing database drivers (scripts/bench_support/drivers.py) ...")
        print(
            "\n"
            + drivers.run(
                database.url, items=args.items, duration=args.duration, warmup=args.warmup, turns=3, progress=say
            )
        )
    elif args.drivers:
        print("\ndrivers: not compared, they need PostgreSQL")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "meta": meta,
                "results": [asdict(r) for r in rows],
                "memory_mb": memory,
                "adjust_quantity": adjust_log,
                "auth_interceptor_turns": auth_turns,
                "ledger": ledger,
                "explain": explain,
                "profiles": summaries,
                "notes": NOTES,
                "workloads": [{"name": w.name, "note": w.note, "checked": checks.get(w.name, "")} for w in workloads],
                "server_exit_codes": exit_codes,
            },
            indent=2,
        )
    )
    print(f"\nJSON: {args.json}")
    if args.write_docs:
        DOCS_PERFORMANCE.write_text(with_bench_table(DOCS_PERFORMANCE.read_text(), summary))
        print(f"table written to {DOCS_PERFORMANCE}")


if __name__ == "__main__":
    main()
