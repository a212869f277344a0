"""The startup check that this service's connections fit in what PostgreSQL allows, against
the real server's own max_connections and limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from inventory_svc.server import build_engine
from inventory_svc.settings import InventorySettings
from inventory_svc.storage.connection_budget import DEFAULT_HEADROOM, connection_budget_warning
from tests.e2e.test_database_faults import admin_of
from tests.helpers import free_port, migrated_engine, service_env, service_process


@pytest.fixture(scope="module")
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    engine = build_engine(InventorySettings(database_url=postgres_url))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def allowed(pg_engine: Engine) -> int:
    """What the server lets ordinary connections have, less the headroom."""
    with pg_engine.connect() as connection:
        reserved = connection.execute(
            text(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - coalesce(current_setting('reserved_connections', true), '0')::int"
            )
        ).scalar_one()
    return int(reserved) - DEFAULT_HEADROOM


def test_processes_whose_pools_fit_get_no_warning(pg_engine, allowed):
    # Each process: 2 pooled + 1 overflow + the listener's one = 4 connections.
    assert connection_budget_warning(pg_engine, pool_size=2, max_overflow=1, processes=allowed // 4) is None


def test_one_process_too_many_is_a_warning_that_names_the_numbers(pg_engine, allowed):
    processes = allowed // 4 + 1

    warning = connection_budget_warning(pg_engine, pool_size=2, max_overflow=1, processes=processes)

    assert warning is not None
    assert f"{processes} process(es)" in warning and f"{processes * 4} connections" in warning
    assert f"so {allowed};" in warning


def test_a_database_connection_limit_below_the_pools_is_a_warning(pg_engine, postgres_url):
    name = make_url(postgres_url).database
    with admin_of(postgres_url) as cursor:
        cursor.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT 5')
        try:
            warning = connection_budget_warning(pg_engine, pool_size=2, max_overflow=2, processes=2)
        finally:
            cursor.execute(f'ALTER DATABASE "{name}" CONNECTION LIMIT -1')

    assert warning is not None and "database's CONNECTION LIMIT is 5" in warning


def test_an_unreachable_database_is_a_warning_not_an_error():
    engine = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    try:
        warning = connection_budget_warning(engine, pool_size=1, max_overflow=1, processes=1)
    finally:
        engine.dispose()

    assert warning == "could not check the database connection budget: OperationalError"


def test_sqlite_has_no_budget_to_check(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'inventory.db'}")

    assert connection_budget_warning(engine, pool_size=100, max_overflow=100, processes=100) is None


def test_a_server_whose_processes_cannot_fit_warns_once_at_start(postgres_url, tmp_path):
    # Two worker processes of 60 + 60 connections each cannot fit in max_connections 100.
    env = service_env(
        INVENTORY_DATABASE_URL=postgres_url,
        INVENTORY_LISTEN_ADDRESS=f"127.0.0.1:{free_port()}",
        INVENTORY_PROCESSES="2",
        INVENTORY_DB_POOL_SIZE="60",
        INVENTORY_MAX_WORKERS="2",
    )
    with (
        migrated_engine(InventorySettings(database_url=postgres_url)),
        service_process("inventory_svc.server", env, tmp_path / "inventory.log") as process,
    ):
        process.wait_until_serving(env["INVENTORY_LISTEN_ADDRESS"])
        warnings = [line["message"] for line in process.log_lines() if line["level"] == "WARNING"]

    assert len(warnings) == 1
    assert "2 process(es) x (60 pooled + 60 overflow + 1 listener) = 242 connections may not fit" in warnings[0]
