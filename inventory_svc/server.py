"""Wiring of the inventory service: engine, service, gRPC server, health, reflection.

The only module that knows every piece, and the only caller of create_engine.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from inventory.v1 import inventory_pb2, inventory_pb2_grpc
from inventory_svc import migrations
from inventory_svc.repository import SqlUnitOfWork, prepare_engine
from inventory_svc.service import ItemService
from inventory_svc.servicer import ROLE_FOR_METHOD, ItemServicer
from inventory_svc.settings import InventorySettings
from servicekit.auth import JwtAuthInterceptor, TokenVerifier
from servicekit.logging import configure_logging
from servicekit.status import StatusMappingInterceptor

log = logging.getLogger(__name__)

ITEM_SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["ItemService"].full_name


def build_engine(settings: InventorySettings) -> Engine:
    if settings.database_url.startswith("sqlite:///"):
        # The embedded default: make its folder so that a new user needs nothing prepared.
        database_path = settings.database_url.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(os.path.abspath(database_path)), exist_ok=True)
    url = make_url(settings.database_url)
    if url.drivername == "postgresql":
        # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql:// URL; we ship psycopg2.
        url = url.set(drivername="postgresql+psycopg2")
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
    )
    return prepare_engine(engine)


def build_item_service(engine: Engine) -> ItemService:
    return ItemService(partial(SqlUnitOfWork, engine))


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def shutdown(self, drain_s: float, grace_s: float) -> None:
        """Probes see NOT_SERVING first; after drain_s new calls are refused and
        in-flight ones get grace_s to finish."""
        self.health.enter_graceful_shutdown()
        time.sleep(drain_s)
        self.server.stop(grace_s).wait()


def build_server(settings: InventorySettings, items: ItemService, *, require_auth: bool = True) -> RunningServer:
    """`require_auth=False` exists only so that scripts/bench can measure what auth costs."""
    # Status mapping comes first, so that it also maps what authentication raises.
    interceptors: list[grpc.ServerInterceptor] = [StatusMappingInterceptor()]
    if require_auth:
        interceptors.append(JwtAuthInterceptor(TokenVerifier(settings.auth), ROLE_FOR_METHOD))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
    )
    inventory_pb2_grpc.add_ItemServiceServicer_to_server(ItemServicer(items), server)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", ITEM_SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

    reflection.enable_server_reflection(
        (ITEM_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(settings.listen_address)
    return RunningServer(server, port, health_servicer)


def serve(settings: InventorySettings) -> None:
    engine = build_engine(settings)
    running = build_server(settings, build_item_service(engine))
    running.server.start()
    host = settings.listen_address.rsplit(":", 1)[0]
    log.info("inventory listening on %s:%d", host, running.port, extra={"port": running.port})

    stopping = threading.Event()

    def stop_gracefully(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("stopping on %s", signal.Signals(signum).name)
        threading.Thread(
            target=running.shutdown,
            args=(settings.shutdown_drain_s, settings.shutdown_grace_s),
            name="shutdown",
        ).start()

    signal.signal(signal.SIGTERM, stop_gracefully)
    signal.signal(signal.SIGINT, stop_gracefully)
    running.server.wait_for_termination()
    engine.dispose()
    log.info("inventory stopped")


def main() -> None:
    settings = InventorySettings.from_env(os.environ)
    configure_logging(settings.log_level)
    serve(settings)


def migrate_main() -> None:
    """Bring the configured database to the newest schema, then exit."""
    settings = InventorySettings.from_env(os.environ)
    configure_logging(settings.log_level)
    engine = build_engine(settings)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()
    log.info("inventory database is at the newest schema")


if __name__ == "__main__":
    main()
