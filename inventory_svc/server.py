"""Wiring of the inventory service: engine, service, gRPC server, health, reflection.

The only module that knows every piece; storage/ builds the engine.
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Counter
from sqlalchemy import Engine

from inventory.v1 import inventory_pb2, inventory_pb2_grpc
from inventory_client.roles import ROLE_FOR_METHOD
from inventory_svc import migrations
from inventory_svc.async_service import AsyncItemService, DatabaseThreads
from inventory_svc.item_cache import ItemCache
from inventory_svc.service import ItemService
from inventory_svc.servicer import ItemServicer, ReservationServicer
from inventory_svc.settings import InventorySettings
from inventory_svc.storage import (
    PostgresChangeListener,
    build_engine,
    connection_budget_warning,
    unit_of_work_factory,
    watch_pool,
)
from inventory_svc.watches import LowStockSignal
from servicekit.background import BackgroundThread, Periodic
from servicekit.jwt import TokenVerifier
from servicekit.logging import configure_logging
from servicekit.main import run_service
from servicekit.observability import ServerMetrics, metrics_served
from servicekit.pipeline import Authorizer
from servicekit.server import RunningServer, finish_server, new_server, serve_until_signalled
from servicekit.tracing import Tracing, tracing_started

log = logging.getLogger(__name__)

ITEM_SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["ItemService"].full_name
RESERVATION_SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["ReservationService"].full_name


def build_item_service(
    engine: Engine,
    settings: InventorySettings | None = None,
    item_cache: ItemCache | None = None,
) -> ItemService:
    settings = settings or InventorySettings()
    signal = LowStockSignal()
    return ItemService(
        unit_of_work_factory(engine, on_low_stock_events=signal.notify),
        low_stock_signal=signal,
        request_id_ttl_s=settings.request_id_ttl_s,
        max_watchers=settings.max_watchers,
        max_watches_per_subject=settings.max_watches_per_subject,
        item_cache=item_cache,
    )


def periodic_tasks(items: ItemService, settings: InventorySettings) -> list[BackgroundThread]:
    """What every replica does on its own, unstarted: purge old request_ids, expire reservations."""
    return [
        Periodic("purge-request-ids", settings.request_id_purge_interval_s, items.purge_expired_request_ids),
        Periodic("expire-reservations", settings.reservation_sweep_interval_s, items.reservations.expire_all_due),
    ]


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
    server = new_server(
        metrics or ServerMetrics(), authorizer, settings.server.limits, tracing, reuse_port=settings.server.reuse_port
    )
    use_cases = AsyncItemService(items, threads, watch_poll_s=settings.watch_poll_s)
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(ItemServicer(use_cases), server)
    inventory_pb2_grpc.add_ReservationServiceServicer_to_server(ReservationServicer(use_cases), server)
    running = await finish_server(
        server, settings.server.listen_address, [ITEM_SERVICE_NAME, RESERVATION_SERVICE_NAME], tls=settings.server.tls
    )
    running.on_shutdown.append(items.watches.stop)
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
    background = periodic_tasks(items, settings)
    if cache is not None:
        # Low-stock events committed by any replica wake this replica's watchers; changed
        # items leave its cache, which is on only while the listener listens.
        background.append(
            PostgresChangeListener(
                engine,
                on_low_stock=items.watches.wake,
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
        summary=(
            f"Serves {ITEM_SERVICE_NAME} (items, stock, low-stock watches) and {RESERVATION_SERVICE_NAME} over "
            "gRPC, with health and reflection."
        ),
    )


def migrate_main(argv: list[str] | None = None) -> None:
    """Bring the configured database to the newest schema, then exit."""
    argparse.ArgumentParser(
        description="Brings the inventory database to the newest schema (alembic upgrade head), then exits.",
        epilog="The database is INVENTORY_DATABASE_URL (or DATABASE_URL): docs/configuration.md.",
    ).parse_args(argv)
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
