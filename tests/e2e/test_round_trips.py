"""Writes in as few database round trips as their guarantees need: on PostgreSQL a stock
change, a new item, a reservation and its confirmation or release (with their ledger rows
and request_id record) are each one statement in autocommit, so one round trip; each
guarantee still holds on that path."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg2
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from inventory_svc.domain import ItemFields, Money
from inventory_svc.reservation_rules import InsufficientStock, ReservationLine, ReservationState
from inventory_svc.server import build_item_service
from inventory_svc.service import ItemService
from inventory_svc.settings import InventorySettings
from inventory_svc.stock import LowStockChange
from inventory_svc.storage import SqlUnitOfWork
from inventory_svc.storage.tables import LOW_STOCK_EVENT_IDS_LOCK
from servicekit.errors import FailedPrecondition, InvalidField, NotFound
from tests.helpers import migrated_engine


@pytest.fixture(scope="module")
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    # Without pre-ping: its SELECT 1 at checkout is a round trip of its own, counted apart.
    with migrated_engine(InventorySettings(database_url=postgres_url, db_pool_pre_ping=False)) as engine:
        yield engine


@pytest.fixture
def service(pg_engine: Engine) -> ItemService:
    return build_item_service(pg_engine, InventorySettings(database_url=str(pg_engine.url)))


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[tuple[str, bool]]]:
    """Each statement sent on `engine`: its first words, and whether it ran in autocommit
    (then no BEGIN and no COMMIT went with it: the statement was the whole round trip)."""
    sent: list[tuple[str, bool]] = []

    def record(connection, _cursor, statement, _parameters, _context, _many) -> None:
        sent.append((statement.split(None, 2)[0], connection.connection.driver_connection.autocommit))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def fields(sku: str, quantity: int = 10, low_stock_threshold: int = 2) -> ItemFields:
    return ItemFields(
        sku=f"{sku}-{uuid.uuid4().hex[:8]}",
        name="Round trip",
        price=Money("EUR", 10**9),
        quantity=quantity,
        low_stock_threshold=low_stock_threshold,
    )


def test_a_stock_change_is_one_statement_in_autocommit(service, pg_engine):
    item = service.create_item(fields("RT"))

    with statements_sent(pg_engine) as sent:
        service.adjust_quantity(item.id, delta=-1)

    assert sent == [("WITH", True)]


def test_a_stock_change_with_a_request_id_that_crosses_the_threshold_is_one_statement(service, pg_engine):
    item = service.create_item(fields("RT", quantity=3))

    with statements_sent(pg_engine) as sent:
        changed = service.adjust_quantity(item.id, delta=-2, request_id=str(uuid.uuid4()))

    assert sent == [("WITH", True)]
    assert changed.quantity == 1
    with SqlUnitOfWork(pg_engine) as uow:
        assert [m.low_stock_change for m in uow.movements.list_page(item.id, None, 10)] == [
            LowStockChange.BECAME_LOW,
            LowStockChange.NONE,
        ]


def test_a_new_item_with_a_request_id_is_one_statement(service, pg_engine):
    with statements_sent(pg_engine) as sent:
        service.create_item(fields("RT"), request_id=str(uuid.uuid4()))

    assert sent == [("WITH", True)]


def test_a_replay_after_the_stock_ran_out_answers_the_first_result(service):
    item = service.create_item(fields("RT", quantity=5))
    request_id = str(uuid.uuid4())
    first = service.adjust_quantity(item.id, delta=-5, request_id=request_id)

    again = service.adjust_quantity(item.id, delta=-5, request_id=request_id)

    assert again == first
    assert service.get_item(item.id).quantity == 0


def test_a_replay_answers_the_first_result_and_changes_nothing(service):
    item = service.create_item(fields("RT", quantity=5))
    request_id = str(uuid.uuid4())
    first = service.adjust_quantity(item.id, delta=-1, request_id=request_id)

    again = service.adjust_quantity(item.id, delta=-1, request_id=request_id)

    assert again == first
    assert service.get_item(item.id).quantity == 4
    assert [m.delta for m in service.list_stock_movements(item.id, 10, "").items] == [-1, 5]


def test_a_request_id_reused_for_another_change_is_invalid_and_changes_nothing(service):
    item = service.create_item(fields("RT", quantity=5))
    request_id = str(uuid.uuid4())
    service.adjust_quantity(item.id, delta=-1, request_id=request_id)

    with pytest.raises(InvalidField) as raised:
        service.adjust_quantity(item.id, delta=-2, request_id=request_id)

    assert raised.value.field == "request_id"
    assert service.get_item(item.id).quantity == 4


def test_a_new_item_replayed_with_its_request_id_answers_the_first_item(service):
    request_id, new = str(uuid.uuid4()), fields("RT")

    assert service.create_item(new, request_id=request_id) == service.create_item(new, request_id=request_id)


def test_too_little_stock_and_a_missing_item_stay_apart(service):
    item = service.create_item(fields("RT", quantity=1))

    with pytest.raises(FailedPrecondition):
        service.adjust_quantity(item.id, delta=-2)
    with pytest.raises(NotFound):
        service.adjust_quantity(10**12, delta=-2)
    assert service.get_item(item.id).quantity == 1


def test_concurrent_stock_changes_lose_no_update_and_never_go_negative(service):
    item = service.create_item(fields("RT", quantity=50))

    def sell(_: int) -> bool:
        try:
            service.adjust_quantity(item.id, delta=-1)
            return True
        except FailedPrecondition:
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        sold = sum(pool.map(sell, range(60)))

    assert sold == 50
    assert service.get_item(item.id).quantity == 0


@contextmanager
def event_ids_lock_held_elsewhere(postgres_url: str) -> Iterator[None]:
    url = make_url(postgres_url)
    with psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as other:
        other.autocommit = True
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (LOW_STOCK_EVENT_IDS_LOCK,))
            try:
                yield
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (LOW_STOCK_EVENT_IDS_LOCK,))


def test_only_a_change_that_crosses_the_threshold_queues_for_the_event_ids_lock(service, postgres_url):
    # The lock makes low-stock event ids increase in commit order; an ordinary change must
    # not wait for it, and an event must.
    item = service.create_item(fields("RT", quantity=10, low_stock_threshold=2))
    crossed = threading.Event()
    with event_ids_lock_held_elsewhere(postgres_url):
        ordinary = threading.Thread(target=service.adjust_quantity, args=(item.id,), kwargs={"delta": -1})
        ordinary.start()  # 9: no event, so no wait
        ordinary.join(10)
        assert not ordinary.is_alive(), "a change that crosses no threshold waited for the event ids lock"
        crossing = threading.Thread(target=lambda: (service.adjust_quantity(item.id, delta=-7), crossed.set()))
        crossing.start()

        assert not crossed.wait(0.5)
    crossing.join(10)
    assert crossed.is_set()
    assert service.get_item(item.id).quantity == 2


# --- reservations -------------------------------------------------------------------------


def test_a_reservation_of_ten_lines_is_one_statement_in_autocommit(service, pg_engine):
    items = [service.create_item(fields("RT", quantity=5)) for _ in range(10)]
    lines = [ReservationLine(item.id, 2) for item in reversed(items)]

    with statements_sent(pg_engine) as sent:
        reservation = service.reservations.reserve(lines, None, "cart", principal="p", request_id=str(uuid.uuid4()))

    assert sent == [("WITH", True)]
    assert reservation.lines == tuple(lines)
    assert service.reservations.get(reservation.id) == reservation
    assert [service.get_item(item.id).reserved_quantity for item in items] == [2] * 10


@pytest.mark.parametrize(
    ("end", "state", "quantity_after"),
    [("confirm", ReservationState.CONFIRMED, 3), ("release", ReservationState.RELEASED, 5)],
)
def test_confirming_or_releasing_is_one_statement_in_autocommit(service, pg_engine, end, state, quantity_after):
    item = service.create_item(fields("RT", quantity=5, low_stock_threshold=3))
    reservation = service.reservations.reserve([ReservationLine(item.id, 2)], None, "cart", principal="p")
    request_id = str(uuid.uuid4())

    with statements_sent(pg_engine) as sent:
        ended = getattr(service.reservations, end)(reservation.id, principal="q", request_id=request_id)

    assert sent == [("WITH", True)]
    assert ended == service.reservations.get(reservation.id)
    assert ended.state is state
    assert getattr(service.reservations, end)(reservation.id, request_id=request_id) == ended  # the first result
    after = service.get_item(item.id)
    assert (after.quantity, after.reserved_quantity) == (quantity_after, 0)
    ledger = service.list_stock_movements(item.id, 10, "").items
    # Reserving 2 of 5 took it to 3 available (low); the end made it recover, or sold it.
    assert [(m.delta, m.reserved_delta, m.reservation_id, m.principal) for m in ledger[:2]] == [
        (quantity_after - 5, -2, reservation.id, "q"),
        (0, 2, reservation.id, "p"),
    ]
    assert ledger[1].low_stock_change is LowStockChange.BECAME_LOW
    expected_change = LowStockChange.NONE if state is ReservationState.CONFIRMED else LowStockChange.RECOVERED
    assert ledger[0].low_stock_change is expected_change


def test_a_short_line_in_one_statement_holds_nothing(service, pg_engine):
    plenty, scarce = service.create_item(fields("RT", quantity=5)), service.create_item(fields("RT", quantity=1))

    with pytest.raises(InsufficientStock):
        service.reservations.reserve([ReservationLine(plenty.id, 1), ReservationLine(scarce.id, 2)], None, "")

    assert [service.get_item(item.id).reserved_quantity for item in (plenty, scarce)] == [0, 0]
    assert len(service.list_stock_movements(plenty.id, 10, "").items) == 1
