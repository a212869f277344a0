"""Wiring of the inventory service: engine, service, gRPC server, health, reflection.

The only module that knows every piece, and the only caller of create_engine.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from prometheus_client import Counter, Gauge
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import Pool

from inventory.v1 import inventory_pb2, inventory_pb2_grpc
from inventory_client.roles import ROLE_FOR_METHOD
from inventory_svc import migrations
from inventory_svc.async_service import AsyncItemService, DatabaseThreads
from inventory_svc.connection_budget import connection_budget_warning
from inventory_svc.item_cache import ItemCache
from inventory_svc.repository import PostgresChangeListener, SqlUnitOfWork, prepare_engine
from inventory_svc.service import ItemService, LowStockSignal
from inventory_svc.servicer import ItemServicer
from inventory_svc.settings import InventorySettings
from servicekit.jwt import TokenVerifier
from servicekit.logging import configure_logging
from servicekit.main import run_service
from servicekit.observability import ServerMetrics, metrics_served
from servicekit.pipeline import Authorizer
from servicekit.server import Periodic, RunningServer, finish_server, new_server, serve_until_signalled
from servicekit.tracing import Tracing, tracing_started

log = logging.getLogger(__name__)

ITEM_SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["ItemService"].full_name


def watch_pool(metrics: ServerMetrics, pool: Pool, size: int) -> None:
    """The database connection pool's use, as gauges that each worker process sets from what
    its pool holds (livesum adds up the live processes).

    The pool's events are not balanced through an outage (a checkout whose connect fails
    still checks in; a connection detached for the change listener leaves the pool), so
    counting them up and down drifts: the gauges are sizes of sets of the pool's own
    connection records instead, which cannot go negative or count one connection twice."""
    Gauge(
        "db_pool_size",
        "Database connections the pool keeps open when idle.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    ).set(size)
    in_use_gauge = Gauge(
        "db_pool_connections_in_use",
        "Database connections lent out to calls now.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    )
    open_gauge = Gauge(
        "db_pool_connections_open",
        "Database connections of the pool open now, in use or idle.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    )
    lock = threading.Lock()
    in_use: set[int] = set()  # ids of connection records lent out
    opened: set[int] = set()  # ids of connection records that hold an open connection

    def update(record: object, *, lent: bool | None = None, connected: bool | None = None) -> None:
        with lock:
            for members, member in ((in_use, lent), (opened, connected)):
                if member is not None:
                    (members.add if member else members.discard)(id(record))
            in_use_gauge.set(len(in_use))
            open_gauge.set(len(opened))

    event.listen(pool, "checkout", lambda _c, record, _p: update(record, lent=True))
    event.listen(pool, "checkin", lambda _c, record: update(record, lent=False))
    event.listen(pool, "connect", lambda _c, record: update(record, connected=True))
    event.listen(pool, "close", lambda _c, record: update(record, connected=False))
    # A detached connection (the change listener's own) leaves the pool; its record stays, empty.
    event.listen(pool, "detach", lambda _c, record: update(record, lent=False, connected=False))


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


def build_item_service(
    engine: Engine,
    settings: InventorySettings | None = None,
    item_cache: ItemCache | None = None,
) -> ItemService:
    settings = settings or InventorySettings()
    signal = LowStockSignal()
    return ItemService(
        partial(SqlUnitOfWork, engine, on_low_stock_events=signal.notify),
        low_stock_signal=signal,
        request_id_ttl_s=settings.request_id_ttl_s,
        max_watchers=settings.max_watchers,
        max_watches_per_subject=settings.max_watches_per_subject,
        item_cache=item_cache,
    )


# Watchers' reads are a few rows each: two threads serve every watcher of a process.
WATCH_THREADS = 2


def database_threads(settings: InventorySettings) -> DatabaseThreads:
    """The threads that run database work (keep the pool at least as large as the calls'
    threads, so that no call waits for a connection; overflow covers the watches')."""
    return DatabaseThreads(
        ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="db"),
        ThreadPoolExecutor(max_workers=WATCH_THREADS, thread_name_prefix="watch-db"),
    )


async def build_server(
    settings: InventorySettings,
    items: ItemService,
    threads: DatabaseThreads,
    *,
    metrics: ServerMetrics | None = None,
    tracing: Tracing | None = None,
    require_auth: bool = True,
) -> RunningServer:
    """Call on the event loop that will serve. `require_auth=False` exists only so that
    scripts/bench can measure what auth costs."""
    authorizer = Authorizer(TokenVerifier(settings.auth), ROLE_FOR_METHOD) if require_auth else None
    server = new_server(metrics or ServerMetrics(), authorizer, settings.server.limits, tracing)
    servicer = ItemServicer(AsyncItemService(items, threads, watch_poll_s=settings.watch_poll_s))
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(servicer, server)
    running = await finish_server(server, settings.server.listen_address, [ITEM_SERVICE_NAME])
    running.on_shutdown.append(items.stop_watchers)
    return running


async def serve(settings: InventorySettings) -> None:
    engine = build_engine(settings)
    metrics = ServerMetrics()
    watch_pool(metrics, engine.pool, settings.db_pool_size)
    # Only PostgreSQL tells every replica what changed; without that a cache could go stale.
    cache = None
    if engine.dialect.name == "postgresql":
        lookups = Counter(
            "inventory_item_cache_lookups",
            "GetItem lookups in the item cache while it is on.",
            ["result"],
            registry=metrics.registry,
        )
        cache = ItemCache(
            settings.item_cache_size,
            max_age_s=settings.item_cache_max_age_s,
            on_hit=lookups.labels("hit").inc,
            on_miss=lookups.labels("miss").inc,
        )
    items = build_item_service(engine, settings, cache)
    background: list[Periodic | PostgresChangeListener] = [
        Periodic("purge-request-ids", settings.request_id_purge_interval_s, items.purge_expired_request_ids)
    ]
    if cache is not None:
        # Low-stock events committed by any replica wake this replica's watchers; changed
        # items leave its cache, which is on only while the listener listens.
        background.append(
            PostgresChangeListener(
                engine,
                on_low_stock=items.wake_watchers,
                on_item_changed=cache.invalidate,
                on_all_items_changed=cache.invalidate_all,
                on_listening=cache.enable,
                on_lost=cache.disable,
            )
        )
    for task in background:
        task.start()
    try:
        with (
            database_threads(settings) as threads,
            metrics_served(settings.server.metrics_address, metrics.registry),
            tracing_started(settings.server.traces_exporter, "inventory") as tracing,
        ):
            running = await build_server(settings, items, threads, metrics=metrics, tracing=tracing)
            await serve_until_signalled(running, "inventory", settings.server)
    finally:
        for task in background:
            task.stop()
        engine.dispose()


def warn_unless_connections_fit(settings: InventorySettings) -> None:
    """Once per server (the supervisor's check counts all its worker processes): a pool that
    PostgreSQL cannot hold fails under load, so say so at start. Replicas are not counted:
    the docs give the budget for them."""
    engine = build_engine(settings)
    try:
        warning = connection_budget_warning(
            engine,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            processes=settings.server.processes,
        )
    finally:
        engine.dispose()
    if warning:
        log.warning("%s", warning)


def main() -> None:
    run_service(
        "inventory_svc.server",
        "INVENTORY",
        InventorySettings.from_env,
        serve,
        once_per_server=warn_unless_connections_fit,
    )


def migrate_main() -> None:
    """Bring the configured database to the newest schema, then exit."""
    settings = InventorySettings.from_env(os.environ, serving=False)
    configure_logging(settings.server.log_level)
    engine = build_engine(settings)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()
    log.info("inventory database is at the newest schema")


if __name__ == "__main__":
    main()
