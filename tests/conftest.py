"""Fixtures that build real things: a migrated database on each backend, a gRPC server
on a free loopback port, and stubs on real channels.

SQLite always runs. PostgreSQL runs when TEST_POSTGRES_URL names a server (a throwaway
database is created there and dropped after); with TEST_REQUIRE_POSTGRES=1 (CI) a
missing server fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.engine import make_url

from crm_svc.settings import CrmSettings
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.server import build_item_service
from inventory_svc.service import ItemService
from inventory_svc.settings import InventorySettings
from inventory_svc.storage.tables import items, request_ids, reservation_lines, reservations, stock_movements
from servicekit.server import ServerThread
from servicekit.server_settings import ServerSettings
from tests import test_static_checks
from tests.helpers import TEST_AUTH, authorized_channel, migrated_engine, mint, serving, serving_crm

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "")
REQUIRE_POSTGRES = os.environ.get("TEST_REQUIRE_POSTGRES") == "1"


@contextmanager
def throwaway_postgres_database(server_url: str) -> Iterator[str]:
    url = make_url(server_url)
    name = f"inventory_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database or "postgres",
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'inventory.db'}"
        return
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("TEST_REQUIRE_POSTGRES=1 but TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need TEST_POSTGRES_URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
    with throwaway_postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture(scope="session")
def inventory_settings(database_url: str) -> InventorySettings:
    return InventorySettings(database_url=database_url, server=ServerSettings(), auth=TEST_AUTH)


@pytest.fixture(scope="session")
def engine(inventory_settings: InventorySettings) -> Iterator[Engine]:
    with migrated_engine(inventory_settings) as engine:
        yield engine


@pytest.fixture
def empty_database(engine: Engine) -> Engine:
    """The session's database with no items: each test starts from nothing."""
    with engine.begin() as connection:
        for table in (reservation_lines, reservations, items, stock_movements, request_ids):
            connection.execute(delete(table))
    return engine


@pytest.fixture
def item_service(empty_database: Engine, inventory_settings: InventorySettings) -> ItemService:
    return build_item_service(empty_database, inventory_settings)


@pytest.fixture(scope="session")
def inventory_server(inventory_settings: InventorySettings, engine: Engine) -> Iterator[ServerThread]:
    with serving(inventory_settings, engine) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL database of its own, for tests that only make sense there."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("TEST_REQUIRE_POSTGRES=1 but TEST_POSTGRES_URL is not set")
        pytest.skip("needs TEST_POSTGRES_URL")
    with throwaway_postgres_database(POSTGRES_URL) as url:
        yield url


@pytest.fixture
def inventory_address(inventory_server: ServerThread, empty_database: Engine) -> str:
    return f"127.0.0.1:{inventory_server.port}"


@pytest.fixture
def items_stub(inventory_address: str) -> Iterator[inventory_pb2_grpc.ItemServiceStub]:
    """A stub whose calls carry a token with both inventory roles."""
    with authorized_channel(inventory_address, mint()) as channel:
        yield inventory_pb2_grpc.ItemServiceStub(channel)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.path.name == "test_static_checks.py" for item in session.items):
        test_static_checks.start_mypy()


def pytest_report_header() -> str:
    if POSTGRES_URL:
        return f"PostgreSQL tests: on, throwaway databases on {make_url(POSTGRES_URL).render_as_string()}"
    return "PostgreSQL tests: skipped (set TEST_POSTGRES_URL to run them)"


def crm_settings(inventory_server: ServerThread) -> CrmSettings:
    return CrmSettings(
        server=ServerSettings(),
        inventory_target=f"127.0.0.1:{inventory_server.port}",
        auth=TEST_AUTH,
        inventory_auth=TEST_AUTH,
    )


@pytest.fixture(scope="session")
def crm_server(inventory_server: ServerThread) -> Iterator[ServerThread]:
    with serving_crm(crm_settings(inventory_server)) as running:
        yield running


@pytest.fixture
def crm_address(crm_server: ServerThread, empty_database: Engine) -> str:
    return f"127.0.0.1:{crm_server.port}"


# For tests whose calls never reach storage (auth, health, rules checked before any read):
# one server on SQLite, so that they run once rather than once per database.


@pytest.fixture(scope="session")
def inventory_server_any_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('any-db') / 'inventory.db'}"
    settings = InventorySettings(database_url=database_url, server=ServerSettings(), auth=TEST_AUTH)
    with migrated_engine(settings) as engine, serving(settings, engine) as running:
        yield running


@pytest.fixture(scope="session")
def inventory_address_any_db(inventory_server_any_db: ServerThread) -> str:
    return f"127.0.0.1:{inventory_server_any_db.port}"


@pytest.fixture(scope="session")
def crm_address_any_db(inventory_server_any_db: ServerThread) -> Iterator[str]:
    with serving_crm(crm_settings(inventory_server_any_db)) as running:
        yield f"127.0.0.1:{running.port}"
