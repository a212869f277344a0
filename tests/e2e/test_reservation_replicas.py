"""Reservations on three inventory replicas sharing one PostgreSQL database, each sweeping for
due reservations: every expiry happens exactly once whichever replica's sweep reaches it, and
200 shoppers at once on scarce stock never hold or sell more units than there were. The
ledger shows both."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg2
import pytest
from google.protobuf import duration_pb2
from sqlalchemy.engine import make_url

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from tests.conftest import throwaway_postgres_database
from tests.helpers import (
    ServiceProcess,
    all_pages,
    authorized_channel,
    create,
    error_reason,
    eventually,
    migrate,
    mint,
    precondition_subjects,
    service_env,
    service_process,
)

REPLICAS = 3
POOL_SIZE = 4  # as many threads: no call waits for a connection; 3 x (4 + 4 overflow + listener) of the 100 shared
SWEEP_INTERVAL_S = 0.1
SHORT_TTL = duration_pb2.Duration(seconds=1)  # the shortest a reservation may have
LONG_TTL = duration_pb2.Duration(seconds=60)  # never reached: those are confirmed or released first
# Channels to one address otherwise share one connection: each shopper gets its own, as separate clients would.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)

ACTIVE = pb.RESERVATION_STATE_ACTIVE
EXPIRED = pb.RESERVATION_STATE_EXPIRED
RESERVED = pb.STOCK_MOVEMENT_REASON_RESERVED
SALE = pb.STOCK_MOVEMENT_REASON_SALE
RELEASED = pb.STOCK_MOVEMENT_REASON_RESERVATION_RELEASED
EXPIRED_ROW = pb.STOCK_MOVEMENT_REASON_RESERVATION_EXPIRED

# Which replica wrote each ledger row: every replica connects under an application_name of
# its own, which this trigger keeps beside the row. The service never reads the table.
LEDGER_WRITERS = """
CREATE TABLE ledger_writers (movement_id bigint PRIMARY KEY, writer text NOT NULL);
CREATE FUNCTION note_ledger_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_writers VALUES (NEW.id, current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER note_ledger_writer AFTER INSERT ON stock_movements
    FOR EACH ROW EXECUTE FUNCTION note_ledger_writer();
"""


@dataclass(frozen=True)
class Replica:
    name: str
    address: str
    process: ServiceProcess


@dataclass
class Replicas:
    database_url: str
    replicas: list[Replica]

    def __getitem__(self, number: int) -> Replica:
        return self.replicas[number % len(self.replicas)]

    def log_positions(self) -> list[int]:
        return [len(replica.process.log_lines()) for replica in self.replicas]

    def errors_logged_since(self, positions: list[int]) -> list[dict[str, Any]]:
        return [
            line
            for replica, position in zip(self.replicas, positions, strict=True)
            for line in replica.process.log_lines()[position:]
            if line["level"] in {"ERROR", "CRITICAL"}
        ]

    def writers(self, movement_ids: list[int]) -> Counter[str]:
        """How many of these ledger rows each replica wrote."""
        with psycopg2.connect(self.database_url) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT writer FROM ledger_writers WHERE movement_id = ANY(%s)", (movement_ids,))
            return Counter(writer for (writer,) in cursor.fetchall())


@pytest.fixture(scope="module")
def replicas(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Three inventory processes on a database of this module's own (postgres_url is shared
    by the session), started at once, each sweeping every SWEEP_INTERVAL_S."""
    log_dir = tmp_path_factory.mktemp("replicas")
    with throwaway_postgres_database(postgres_url) as database_url, ExitStack() as stack:
        migrate(database_url)
        with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
            cursor.execute(LEDGER_WRITERS)
        started = []
        for number in range(REPLICAS):
            name = f"replica-{number}"
            env = service_env(
                INVENTORY_DATABASE_URL=make_url(database_url)
                .update_query_dict({"application_name": name})
                .render_as_string(hide_password=False),
                INVENTORY_LISTEN_ADDRESS="127.0.0.1:0",
                INVENTORY_DB_POOL_SIZE=str(POOL_SIZE),
                INVENTORY_MAX_WORKERS=str(POOL_SIZE),
                INVENTORY_RESERVATION_SWEEP_INTERVAL_S=str(SWEEP_INTERVAL_S),
            )
            started.append(
                (name, stack.enter_context(service_process("inventory_svc.server", env, log_dir / f"{name}.log")))
            )
        yield Replicas(
            database_url, [Replica(name, process.wait_until_serving(), process) for name, process in started]
        )


@dataclass
class Stubs:
    """Stubs on every replica; replica `number` is that number modulo how many there are."""

    item_stubs: list[inventory_pb2_grpc.ItemServiceStub]
    reservation_stubs: list[inventory_pb2_grpc.ReservationServiceStub]

    def items(self, number: int) -> inventory_pb2_grpc.ItemServiceStub:
        return self.item_stubs[number % len(self.item_stubs)]

    def reservations(self, number: int) -> inventory_pb2_grpc.ReservationServiceStub:
        return self.reservation_stubs[number % len(self.reservation_stubs)]


def stubs_of(stack: ExitStack, replicas: Replicas, subject: str) -> Stubs:
    channels = [
        stack.enter_context(authorized_channel(replica.address, mint(subject))) for replica in replicas.replicas
    ]
    return Stubs(
        [inventory_pb2_grpc.ItemServiceStub(channel) for channel in channels],
        [inventory_pb2_grpc.ReservationServiceStub(channel) for channel in channels],
    )


def ledger(stub: inventory_pb2_grpc.ItemServiceStub, item_id: int) -> list[pb.StockMovement]:
    """The item's ledger, oldest first."""
    pages = all_pages(
        lambda token: stub.ListStockMovements(
            pb.ListStockMovementsRequest(item_id=item_id, page_size=500, page_token=token), timeout=10
        )
    )
    return sorted((movement for page in pages for movement in page.movements), key=lambda movement: movement.id)


def steps_of_reservations(ledgers: dict[int, list[pb.StockMovement]]) -> dict[tuple[int, int], list[int]]:
    """The reasons of the ledger rows of each (reservation, item), oldest first."""
    steps: defaultdict[tuple[int, int], list[int]] = defaultdict(list)
    for item_id, movements in ledgers.items():
        for movement in movements:
            if movement.reservation_id:
                steps[(movement.reservation_id, item_id)].append(movement.reason)
    return dict(steps)


def assert_ledger_adds_up(item: pb.Item, movements: list[pb.StockMovement]) -> None:
    assert sum(movement.delta for movement in movements) == item.quantity, item
    assert sum(movement.reserved_delta for movement in movements) == item.reserved_quantity, item
    # Held units never exceeded the stock, after any change: every hold had the units available.
    overdrawn = [movement for movement in movements if not 0 <= movement.reserved_after <= movement.quantity_after]
    assert overdrawn == [], overdrawn


def settled(stub: inventory_pb2_grpc.ItemServiceStub, item_ids: list[int]) -> list[pb.Item]:
    """The items once none holds reserved units: a replica's item cache may be a moment behind
    a change another replica made."""
    found: list[pb.Item] = []

    def none_reserved() -> bool:
        found[:] = stub.BatchGetItems(pb.BatchGetItemsRequest(ids=item_ids)).items
        return all(item.reserved_quantity == 0 for item in found)

    assert eventually(none_reserved, timeout_s=10), found
    return found


def test_expiry_on_three_replicas_ends_each_reservation_exactly_once(replicas):
    logged_before = replicas.log_positions()
    with ExitStack() as stack:
        stubs = stubs_of(stack, replicas, "expiry-clerk")
        # Low once 13 of their 40 units are held, as these reservations hold 19 to 25 of each:
        # the expiries write low-stock recoveries too, as they would in a shop.
        items = [create(stubs.items(number), quantity=40, low_stock_threshold=27) for number in range(4)]
        reserved: list[pb.Reservation] = []
        for number in range(30):
            picked = [items[(number + offset) % len(items)] for offset in range(1 + number % 3)]
            lines = [pb.ReservationLine(item_id=item.id, quantity=1 + number % 2) for item in picked]
            request = pb.ReserveStockRequest(lines=lines, ttl=SHORT_TTL, reference=f"expiry-{number}")
            reserved.append(stubs.reservations(number).ReserveStock(request).reservation)

        def states() -> list[int]:
            return [
                stubs.reservations(number + 1)
                .GetReservation(pb.GetReservationRequest(id=reservation.id))
                .reservation.state
                for number, reservation in enumerate(reserved)
            ]

        assert eventually(lambda: set(states()) == {EXPIRED}, timeout_s=15), Counter(states())
        found = settled(stubs.items(0), [item.id for item in items])
        ledgers = {item.id: ledger(stubs.items(0), item.id) for item in items}

    for item in found:
        assert item.quantity == 40 and item.available_quantity == 40, item
        assert_ledger_adds_up(item, ledgers[item.id])
    # Each line of each reservation: held once, expired once, neither released nor sold.
    expected = {
        (reservation.id, line.item_id): [RESERVED, EXPIRED_ROW]
        for reservation in reserved
        for line in reservation.lines
    }
    assert steps_of_reservations(ledgers) == expected
    expiries = [movement for movements in ledgers.values() for movement in movements if movement.reason == EXPIRED_ROW]
    quantities = {
        (reservation.id, line.item_id): line.quantity for reservation in reserved for line in reservation.lines
    }
    assert all(
        movement.delta == 0 and -movement.reserved_delta == quantities[(movement.reservation_id, movement.item_id)]
        for movement in expiries
    )
    assert replicas.errors_logged_since(logged_before) == []
    # The race is real only if the sweeps of several replicas did the work.
    writers = replicas.writers([movement.id for movement in expiries])
    print(f"expiry rows written by: {dict(writers)}")
    assert len(writers) >= 2, writers


SHOPPERS = 200
STOCK = 15
PLANS = ("confirm", "release", "expire")
FINAL_STATE = {
    "confirm": pb.RESERVATION_STATE_CONFIRMED,
    "release": pb.RESERVATION_STATE_RELEASED,
    "expire": EXPIRED,
}


@dataclass
class Shopper:
    """What one shopper asked for, and what the replicas answered."""

    number: int
    lines: list[pb.ReservationLine]
    plan: str
    reservation: pb.Reservation | None = None
    short: bool = False  # refused with INSUFFICIENT_STOCK, naming only items it asked for
    retried: bool = False
    unexpected: list[str] = field(default_factory=list)


def shop(shopper: Shopper, replicas: Replicas, start: threading.Barrier) -> None:
    """Reserves on the shopper's replica, and half send that again with its request_id to the
    next replica; then confirms there (and again, with its request_id, on the first), releases
    there, or leaves the reservation to expire."""
    token = mint(f"shopper-{shopper.number}")
    home, other = replicas[shopper.number], replicas[shopper.number + 1]
    request = pb.ReserveStockRequest(
        request_id=str(uuid.uuid4()),
        lines=shopper.lines,
        ttl=SHORT_TTL if shopper.plan == "expire" else LONG_TTL,
        reference=f"cart-{shopper.number}",
    )
    with (
        authorized_channel(home.address, token, OWN_CONNECTION) as home_channel,
        authorized_channel(other.address, token, OWN_CONNECTION) as other_channel,
    ):
        at_home = inventory_pb2_grpc.ReservationServiceStub(home_channel)
        elsewhere = inventory_pb2_grpc.ReservationServiceStub(other_channel)
        for stub in (at_home, elsewhere):  # both connected before the start, so that all reserve at once
            stub.ListReservations(pb.ListReservationsRequest(reference=request.reference), timeout=20)
        start.wait()
        try:
            shopper.reservation = at_home.ReserveStock(request, timeout=30).reservation
        except grpc.RpcError as error:
            asked = {f"items/{line.item_id}" for line in shopper.lines}
            if (
                error.code() == grpc.StatusCode.FAILED_PRECONDITION
                and error_reason(error)[0] == "INSUFFICIENT_STOCK"
                and {subject for _, subject in precondition_subjects(error)} <= asked
            ):
                shopper.short = True
            else:
                shopper.unexpected.append(f"ReserveStock: {error.code().name} {error.details()}")
            return
        try:
            if shopper.number % 2 == 0:
                shopper.retried = True
                again = elsewhere.ReserveStock(request, timeout=30).reservation
                if again != shopper.reservation:
                    shopper.unexpected.append(f"ReserveStock again: {again} instead of {shopper.reservation}")
            if shopper.plan == "confirm":
                confirming = pb.ConfirmReservationRequest(id=shopper.reservation.id, request_id=str(uuid.uuid4()))
                confirmed = elsewhere.ConfirmReservation(confirming, timeout=30).reservation
                if at_home.ConfirmReservation(confirming, timeout=30).reservation != confirmed:
                    shopper.unexpected.append("ConfirmReservation again answered otherwise")
            elif shopper.plan == "release":
                elsewhere.ReleaseReservation(pb.ReleaseReservationRequest(id=shopper.reservation.id), timeout=30)
        except grpc.RpcError as error:
            shopper.unexpected.append(f"{error.code().name} {error.details()}")


def test_200_shoppers_on_three_replicas_never_hold_or_sell_more_than_the_stock(replicas):
    logged_before = replicas.log_positions()
    with ExitStack() as stack:
        stubs = stubs_of(stack, replicas, "stock-clerk")
        items = [create(stubs.items(number), quantity=STOCK, low_stock_threshold=5) for number in range(5)]
        chooser = random.Random(20)
        shoppers = [
            Shopper(
                number,
                [
                    pb.ReservationLine(item_id=item.id, quantity=chooser.randint(1, 2))
                    for item in chooser.sample(items, chooser.randint(1, 3))
                ],
                PLANS[number % len(PLANS)],
            )
            for number in range(SHOPPERS)
        ]
        start = threading.Barrier(SHOPPERS, timeout=60)
        started = time.monotonic()
        with ThreadPoolExecutor(SHOPPERS) as pool:
            for done in [pool.submit(shop, shopper, replicas, start) for shopper in shoppers]:
                done.result()
        shopped_s = time.monotonic() - started
        held = [shopper for shopper in shoppers if shopper.reservation is not None]
        print(
            f"{SHOPPERS} shoppers in {shopped_s:.1f} s: {len(held)} held "
            f"({dict(Counter(shopper.plan for shopper in held))}), "
            f"{sum(shopper.short for shopper in shoppers)} short of stock, "
            f"{sum(shopper.retried for shopper in shoppers)} reserved again elsewhere"
        )
        # First, as a call that failed may also leave a reservation active for its whole ttl.
        assert [(shopper.number, problem) for shopper in shoppers for problem in shopper.unexpected] == []

        def states() -> dict[int, int]:
            return {
                shopper.number: stubs.reservations(shopper.number + 2)
                .GetReservation(pb.GetReservationRequest(id=shopper.reservation.id))
                .reservation.state
                for shopper in held
            }

        assert eventually(lambda: ACTIVE not in states().values(), timeout_s=15), states()
        ended = states()
        found = {item.id: item for item in settled(stubs.items(0), [item.id for item in items])}
        ledgers = {item.id: ledger(stubs.items(0), item.id) for item in items}

    # Every refusal was for want of stock, and there were many: the shoppers really contended.
    assert all(shopper.short for shopper in shoppers if shopper.reservation is None)
    assert sum(shopper.short for shopper in shoppers) >= SHOPPERS // 4
    assert {shopper.plan for shopper in held} == set(PLANS) and any(shopper.retried for shopper in held)

    assert ended == {shopper.number: FINAL_STATE[shopper.plan] for shopper in held}
    ending = {"confirm": SALE, "release": RELEASED, "expire": EXPIRED_ROW}
    expected = {
        (shopper.reservation.id, line.item_id): [RESERVED, ending[shopper.plan]]
        for shopper in held
        for line in shopper.reservation.lines
    }
    assert steps_of_reservations(ledgers) == expected  # nothing of a refused reserve, nothing twice
    sold = Counter(
        {
            item_id: -sum(movement.delta for movement in movements if movement.reason == SALE)
            for item_id, movements in ledgers.items()
        }
    )
    bought: Counter[int] = Counter()
    for shopper in held:
        if shopper.plan == "confirm":
            bought.update({line.item_id: line.quantity for line in shopper.reservation.lines})
    assert sold == bought
    for item_id, item in found.items():
        assert 0 <= sold[item_id] <= STOCK, item
        assert item.quantity == STOCK - sold[item_id] and item.available_quantity == item.quantity, item
        assert_ledger_adds_up(item, ledgers[item_id])
    assert replicas.errors_logged_since(logged_before) == []
