"""The engine: built from the settings (driver, pool, TCP keepalives) and given what each
database needs on every connection (SQLite's pragmas, lower() and BEGIN IMMEDIATE)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from inventory_svc.settings import InventorySettings

# How long a SQLite writer waits behind another before its call answers UNAVAILABLE.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# The execution option that marks a write transaction (SQLite then takes its write lock at BEGIN).
WRITE_TRANSACTION_OPTION = "inventory_write_transaction"


def build_engine(settings: InventorySettings) -> Engine:
    if settings.database_url.startswith("sqlite:///"):
        # The embedded default: make its folder so that a new user needs nothing prepared.
        database_path = settings.database_url.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
    url = make_url(settings.database_url)
    if url.drivername == "postgresql":
        # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql:// URL; we ship psycopg2.
        url = url.set(drivername="postgresql+psycopg2")
    # TCP keepalives find a connection cut without a word within seconds, not hours.
    connect_args = (
        {
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
        }
        if url.drivername.startswith("postgresql")
        else {}
    )
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args=connect_args,
    )
    return prepare_engine(engine)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def prepare_engine(engine: Engine) -> Engine:
    """Database-specific settings every connection needs; call once on a new engine."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the "begin" hook below issues BEGIN itself
            # SQLite's own lower() folds A-Z only; searches fold the text with Python's.
            dbapi_connection.create_function("lower", 1, _lower, deterministic=True)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # Writers take the write lock up front: a read lock upgraded later fails at once
            # with "database is locked" instead of waiting its turn.
            immediate = connection.get_execution_options().get(WRITE_TRANSACTION_OPTION)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
