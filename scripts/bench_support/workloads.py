"""What a run measures: each workload's calls (an h2load load), the server that takes them,
how a reply is checked, and the load held beside them; and one real gRPC call per body to
check what h2load cannot."""

from __future__ import annotations

import argparse
import math
import random
import re
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.protobuf.message import Message

from bench_support import data, h2load, reservations
from bench_support.background import competing_load, header_only_streams
from bench_support.common import VAR, say
from bench_support.services import Process
from crm.v1 import crm_pb2
from inventory.v1 import inventory_pb2 as pb

ITEM_SERVICE = "/inventory.v1.ItemService/"
RESERVATION_SERVICE = "/inventory.v1.ReservationService/"
CRM_SERVICE = "/crm.v1.CustomerItemsService/"
PAGE_SIZE = 50
BENCH_CUSTOMER = data.customer_id(7)
AUTH_ON, AUTH_OFF = "GetItem, auth interceptor on", "GetItem, auth interceptor off"
NULL_AIO_CLIENT = "null server (grpc.aio) GetItem, grpc.aio client"
CONFIRM = "ConfirmReservation"
# The calls in flight at which a workload's target (calls/s) is judged.
TARGET_IN_FLIGHT = 8
# ACTIVE reservations made for each ConfirmReservation cell, per second of it (warm-up
# included): more than it confirms on this machine; a cell that runs out ends early.
CONFIRMABLE_PER_S = 3_000


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
    # Calls/s the issue asks for at TARGET_IN_FLIGHT.
    target_per_s: float | None = None
    # Loaded by grpc_load.py instead of h2load: bodies of their own per call.
    grpc_client: bool = False
    each_body_once: bool = False  # (grpc_client) each body one call, in order, and used up
    # Changes reservations: the run ends with the oversell check.
    reserves: bool = False


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
            reply = call(current, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
            current.page_token = reply.next_page_token
            _expect(bool(reply.next_page_token), "ran out of pages")
        return current.page_token


def reserve_bodies(item_ids: list[int], lines: int, count: int, seed: int) -> list[bytes]:
    """`count` ReserveStock requests of `lines` distinct random items each, 1 to 3 units a
    line, the default ttl (15 minutes), no request_id (a fixed body with one would be a replay)."""
    rng = random.Random(seed)
    return [
        h2load.grpc_frame(
            pb.ReserveStockRequest(
                lines=[
                    pb.ReservationLine(item_id=item_id, quantity=rng.randint(1, 3))
                    for item_id in rng.sample(item_ids, lines)
                ],
                reference=f"bench-cart-{number}",
            )
        )
        for number in range(count)
    ]


def _reserved(lines: int) -> Callable[[Any], str]:
    def check(reply: pb.ReserveStockResponse) -> str:
        held = reply.reservation
        _expect(held.state == pb.RESERVATION_STATE_ACTIVE, f"state {held.state}, not ACTIVE")
        _expect(len(held.lines) == lines, f"{len(held.lines)} lines, not {lines}")
        return f"ACTIVE, {lines} line{'s' if lines > 1 else ''}"

    return check


def _confirmed(reply: pb.ConfirmReservationResponse) -> str:
    _expect(reply.reservation.state == pb.RESERVATION_STATE_CONFIRMED, f"state {reply.reservation.state}")
    return "CONFIRMED"


def build_workloads(
    args: argparse.Namespace,
    fixtures: data.Fixtures,
    tokens: dict[str, str],
    processes: dict[str, Process],
    database: data.Database,
    in_flights: list[int],
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

    # The null servers answer any id alike; the real ones get a random active id per h2load process.
    get_item_1 = h2load.Load(ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=1))])
    get_items = h2load.Load(
        ITEM_SERVICE + "GetItem", [frame(pb.GetItemRequest(id=i)) for i in fixtures.item_ids], inventory_token
    )
    workloads = [
        Workload(
            "null server (threads) GetItem",
            "null server (threads)",
            get_item_1,
            pb.GetItemResponse,
            get_item,
            ("null server (threads)",),
            note="grpc.server + 16 threads, constant reply, no interceptors",
        ),
        Workload(
            "null server (grpc.aio) GetItem",
            "null server (grpc.aio)",
            get_item_1,
            pb.GetItemResponse,
            get_item,
            ("null server (grpc.aio)",),
            note="grpc.aio server, constant reply",
        ),
        Workload(
            NULL_AIO_CLIENT,
            "null server (grpc.aio)",
            get_item_1,
            pb.GetItemResponse,
            get_item,
            ("null server (grpc.aio)",),
            grpc_client=True,
            note="the same, loaded by the grpc.aio client of the ConfirmReservation rows (grpc_load.py): their ceiling",
        ),
        Workload(
            "GetItem",
            "inventory",
            get_items,
            pb.GetItemResponse,
            get_item,
            ("inventory",),
            note=f"{len(fixtures.item_ids)} random active ids, one per h2load process",
        ),
        *(
            Workload(
                name,
                name,
                get_items,
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
            get_items,
            pb.GetItemResponse,
            get_item,
            ("inventory",),
            background=header_only_streams(processes["inventory"].address, 10, 100),
            note="while a client with no token holds 10 connections x 100 streams whose request never comes",
        ),
        Workload(
            "GetItem of subject B, subject A searching",
            "inventory",
            get_items,
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
        *(
            Workload(
                f"ReserveStock {lines} line{'s' if lines > 1 else ''}",
                "inventory",
                h2load.Load(
                    RESERVATION_SERVICE + "ReserveStock",
                    reserve_bodies(fixtures.reservable_item_ids, lines, args.max_h2load, seed=lines),
                    inventory_token,
                ),
                pb.ReserveStockResponse,
                _reserved(lines),
                ("inventory",),
                target_per_s=target,
                reserves=True,
                note=f"{lines} distinct random items of {len(fixtures.reservable_item_ids)} (each with "
                f"{reservations.RESERVABLE_STOCK:,} available at the start), 1-3 units a line, one body per "
                "h2load process; each call a new ACTIVE reservation",
            )
            for lines, target in ((1, 1_500), (10, 500))
        ),
        Workload(
            CONFIRM,
            "inventory",
            h2load.Load(RESERVATION_SERVICE + "ConfirmReservation", [], inventory_token),
            pb.ConfirmReservationResponse,
            _confirmed,
            ("inventory",),
            target_per_s=1_500,
            grpc_client=True,
            each_body_once=True,
            reserves=True,
            note=f"each call another ACTIVE reservation of 1 unit of a random item of the "
            f"{len(fixtures.reservable_item_ids)}, made in bulk before the cells ({CONFIRMABLE_PER_S:,} per "
            "second of a cell), each confirmed once, through the grpc.aio client; no request_id",
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
    if any(w.reserves for w in workloads):
        reservations.top_up(database, fixtures.reservable_item_ids)
    for workload in workloads:
        if workload.name == CONFIRM:
            # Every cell's reservations and the spot check's one; ids kept in order, used up in order.
            count = math.ceil(CONFIRMABLE_PER_S * (args.warmup + args.duration)) * len(in_flights) + 1
            say(f"making {count:,} ACTIVE reservations for {CONFIRM} ...")
            made = reservations.add_confirmable(database, fixtures.reservable_item_ids, count, seed=data.SEED)
            bodies = [frame(pb.ConfirmReservationRequest(id=reservation_id)) for reservation_id in made]
            workload.load = replace(workload.load, bodies=bodies)
        if "page" in workload.name and not workload.load.bodies:
            first = pb.ListItemsRequest(category=categories[0], page_size=PAGE_SIZE)
            say(f"following next_page_token to page {deep_page} ...")
            token = page_token_for(processes["inventory"].address, inventory_token, first, deep_page)
            deep = pb.ListItemsRequest(category=categories[0], page_size=PAGE_SIZE, page_token=token)
            workload.load = h2load.Load(workload.load.path, [frame(deep)], workload.load.token)
    return workloads


def spot_check(workload: Workload, address: str) -> str:
    """Sends each body once through a real gRPC client and checks the reply: h2load cannot.
    Of bodies used once, only the first, which is then used up."""
    described: set[str] = set()
    bodies = workload.load.bodies[:1] if workload.each_body_once else workload.load.bodies
    if workload.each_body_once:
        workload.load = replace(workload.load, bodies=workload.load.bodies[1:])
    with grpc.insecure_channel(address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(workload.load.path)
        metadata = (("authorization", f"Bearer {workload.load.token}"),) if workload.load.token else None
        for body in bodies:
            try:
                reply = workload.reply_type.FromString(call(body[5:], metadata=metadata, timeout=30))
            except grpc.RpcError as error:
                raise SystemExit(f"bench: {workload.name} answers {error.code().name}: {error.details()}") from None
            try:
                described.add(workload.check(reply))
            except AssertionError as error:
                raise SystemExit(f"bench: {workload.name} answers wrongly: {error}") from None
    return min(described) + (f" (and {len(described) - 1} more)" if len(described) > 1 else "")
