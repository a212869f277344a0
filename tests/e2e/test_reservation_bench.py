"""The reservation rows of scripts/bench are only worth reading if their calls do what they
say and their check can fail: on a small database of each kind and a real server, the
reservations the bench makes in bulk are each confirmed once through its grpc.aio client,
its ReserveStock bodies reserve, the oversell check finds nothing wrong after them and names
an item whose reserved units no reservation holds, and the bulk expiry of what is left
leaves the ledger adding up. Timings are not checked."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Executable, select, text, update

from inventory.v1 import inventory_pb2 as pb
from inventory_svc.settings import InventorySettings
from inventory_svc.storage.tables import items, reservations
from servicekit.server_settings import ServerSettings
from tests.conftest import throwaway_postgres_database
from tests.helpers import TEST_AUTH, migrate, migrated_engine, mint, serving

# scripts/ is where bench_support lives (scripts/bench runs from there, it is no package).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_support import data, grpc_load, h2load
from bench_support import reservations as bench_reservations
from bench_support.workloads import RESERVATION_SERVICE, reserve_bodies

ITEMS = 300


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[data.Database]:
    """The bench's items, loaded as it loads them, with its reservable items topped up."""

    def loaded(url: str) -> data.Database:
        migrate(url)
        database = data.Database(url, request.param, url, owned=False)
        data.load_items(database, ITEMS, progress=lambda _: None)
        return database

    if request.param == "sqlite":
        yield loaded(f"sqlite:///{tmp_path_factory.mktemp('bench') / 'inventory.db'}")
        return
    with throwaway_postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield loaded(url)


@pytest.fixture(scope="module")
def reservable(database: data.Database) -> list[int]:
    item_ids = data.read_fixtures(database, pool=8, customer=data.customer_id(7)).reservable_item_ids
    bench_reservations.top_up(database, item_ids)
    return item_ids


@pytest.fixture
def address(database: data.Database) -> Iterator[str]:
    settings = InventorySettings(database_url=database.url, server=ServerSettings(), auth=TEST_AUTH)
    with migrated_engine(settings) as engine, serving(settings, engine) as served:
        yield f"127.0.0.1:{served.port}"


def _states(database: data.Database, reservation_ids: list[int]) -> set[str]:
    engine = data.connect(database)
    try:
        with engine.connect() as connection:
            found = connection.execute(select(reservations.c.state).where(reservations.c.id.in_(reservation_ids)))
            return set(found.scalars())
    finally:
        engine.dispose()


def _change_items(database: data.Database, *statements: Executable) -> None:
    engine = data.connect(database)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(statement)
    finally:
        engine.dispose()


def _reserved(database: data.Database, item_id: int) -> int:
    engine = data.connect(database)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(items.c.reserved_quantity).where(items.c.id == item_id)).scalar_one())
    finally:
        engine.dispose()


def test_each_reservation_made_in_bulk_is_confirmed_once_through_the_grpc_client(
    database, reservable, address, tmp_path
):
    made = bench_reservations.add_confirmable(database, reservable, 40, seed=1)
    bodies = [h2load.grpc_frame(pb.ConfirmReservationRequest(id=reservation_id)) for reservation_id in made]
    load = h2load.Load(RESERVATION_SERVICE + "ConfirmReservation", bodies, mint())

    run = grpc_load.run(address, load, 4, tmp_path, max_processes=4, duration_s=30, warmup_s=0, each_body_once=True)

    assert (run.calls_sent, run.ran_out, run.not_ok_by_code) == (40, True, {})
    assert 0 < run.result.calls <= 40  # those answered before the bodies ran out
    assert _states(database, made) == {"confirmed"}
    assert bench_reservations.check_oversell(database).ok


def test_after_reserving_the_check_finds_every_unit_held_and_the_bulk_expiry_gives_them_back(
    database, reservable, address, tmp_path
):
    load = h2load.Load(RESERVATION_SERVICE + "ReserveStock", reserve_bodies(reservable, 10, 1, seed=2), mint())

    run = grpc_load.run(address, load, 2, tmp_path, max_processes=2, duration_s=0.5, warmup_s=0, each_body_once=False)

    assert run.calls_sent > 0 and run.not_ok_by_code == {}
    held = bench_reservations.check_oversell(database)
    assert held.ok, held.describe()
    assert held.active_reservations == run.calls_sent
    assert bench_reservations.expire_left(database) == run.calls_sent
    after = bench_reservations.check_oversell(database)
    assert after.ok and after.active_reservations == 0, after.describe()


def test_the_check_names_an_item_whose_reserved_units_no_reservation_holds(database, reservable):
    item_id = reservable[0]
    more, less = (
        update(items).where(items.c.id == item_id).values(reserved_quantity=items.c.reserved_quantity + delta)
        for delta in (1, -1)
    )
    _change_items(database, more)
    try:
        found = bench_reservations.check_oversell(database)
    finally:
        _change_items(database, less)

    assert not found.ok
    assert (found.oversold, found.reserved_not_active_lines, found.ledger_not_adding_up) == ([], [item_id], [item_id])
    assert f"{item_id}: " in found.describe()


# On PostgreSQL only: SQLite cannot drop the CHECK that keeps reserved units within the quantity.
@pytest.mark.parametrize("database", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_the_check_counts_an_item_with_more_reserved_than_in_stock_as_oversold(database, reservable):
    item_id, reserved = reservable[0], _reserved(database, reservable[0])
    constraint = "ck_items_reserved_within_quantity"
    _change_items(
        database,
        text(f"ALTER TABLE items DROP CONSTRAINT {constraint}"),
        update(items).where(items.c.id == item_id).values(reserved_quantity=items.c.quantity + 1),
    )
    try:
        found = bench_reservations.check_oversell(database)
    finally:
        _change_items(
            database,
            update(items).where(items.c.id == item_id).values(reserved_quantity=reserved),
            text(
                f"ALTER TABLE items ADD CONSTRAINT {constraint} "
                "CHECK (reserved_quantity >= 0 AND reserved_quantity <= quantity)"
            ),
        )

    assert found.oversold == [item_id]
    assert found.describe().startswith(f"oversold: 1 of {ITEMS:,} items")
