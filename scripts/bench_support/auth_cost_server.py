"""The inventory server with or without its token check, to measure what auth costs
(the authentication issue asks for the ratio). Run as a process by the benchmark:

    python scripts/bench_support/auth_cost_server.py 127.0.0.1:PORT on|off 127.0.0.1:METRICS_PORT

Settings come from the environment as for inventory-server (INVENTORY_DATABASE_URL,
JWT_SECRET_FILE, ...). Both variants are wired alike: one process, no item cache (so that
every GetItem reads the database), on the first core when INVENTORY_PIN_CPUS is on, metrics
on METRICS_PORT (so that the benchmark counts their non-OK calls); only the token check
differs. The services themselves have no switch to turn auth off: this script is the only way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from inventory_svc.async_service import DatabaseThreads
from inventory_svc.server import build_item_service, build_server, database_threads
from inventory_svc.service import ItemService
from inventory_svc.settings import InventorySettings
from inventory_svc.storage.engine import build_engine
from servicekit.logging import configure_logging
from servicekit.observability import ServerMetrics, metrics_served


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[2] not in ("on", "off"):
        raise SystemExit("usage: auth_cost_server.py ADDRESS on|off METRICS_ADDRESS")
    address, auth, metrics_address = sys.argv[1:]
    settings = InventorySettings.from_env(
        {**os.environ, "INVENTORY_LISTEN_ADDRESS": address, "INVENTORY_LOG_LEVEL": "WARNING"}
    )
    if settings.server.pin_cpus:
        # On one core, as the inventory workers are: unpinned, a single process's threads hand
        # the GIL across cores, and its speed swings by a third from one cell to the next, far
        # more than the interceptor costs.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    configure_logging(settings.server.log_level)
    engine = build_engine(settings)
    metrics = ServerMetrics()
    with metrics_served(metrics_address, metrics.registry), database_threads(settings) as threads:
        asyncio.run(serve(settings, build_item_service(engine, settings), threads, metrics, auth == "on"))
    engine.dispose()


async def serve(
    settings: InventorySettings,
    items: ItemService,
    threads: DatabaseThreads,
    metrics: ServerMetrics,
    require_auth: bool,
) -> None:
    running = await build_server(settings, items, threads, metrics=metrics, require_auth=require_auth)
    await running.server.start()
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await stopping.wait()
    await running.server.stop(1)


if __name__ == "__main__":
    main()
