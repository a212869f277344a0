"""The only SQL of the inventory service: tables, queries, repositories, the unit of work,
the one-statement writes, the change listener and the engine. server.py wires what this
exports; the service sees it only through the Protocols of inventory_svc.ports.

tables          declarative rows, UtcDateTime, NOTIFY channels, advisory lock ids
rows            domain objects to and from rows (and an Item as a request_id's JSON)
queries         filter and page statements, the hottest calls' statements
repositories    items, the stock ledger, request_ids; reservation_repository: reservations
writes_at_once  PostgreSQL's one-statement writes (data-modifying CTEs); reservation_writes
                holds the statements of reservation steps
unit_of_work    SqlUnitOfWork; errors: what a database error means to a client
listener        PostgresChangeListener (LISTEN/NOTIFY)
engine          build_engine, SQLite's per-connection hooks
pool_metrics    the connection pool's gauges
connection_budget  whether the pools fit in PostgreSQL's max_connections
"""

from inventory_svc.storage.connection_budget import connection_budget_warning
from inventory_svc.storage.engine import build_engine, prepare_engine
from inventory_svc.storage.listener import PostgresChangeListener
from inventory_svc.storage.pool_metrics import watch_pool
from inventory_svc.storage.tables import Base
from inventory_svc.storage.unit_of_work import SqlUnitOfWork, unit_of_work_factory

__all__ = [
    "Base",
    "PostgresChangeListener",
    "SqlUnitOfWork",
    "build_engine",
    "connection_budget_warning",
    "prepare_engine",
    "unit_of_work_factory",
    "watch_pool",
]
