"""The `main()` both services share: read the settings once, set up logging, then either
supervise worker processes or serve in this one until a signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

from servicekit.logging import configure_logging
from servicekit.server_settings import ServerSettings
from servicekit.settings import BindError
from servicekit.workers import is_worker, stay_on_assigned_cpu, supervise_workers

log = logging.getLogger(__name__)


class ServiceSettings(Protocol):
    """A service's settings: whatever else they hold, the settings of its server."""

    @property
    def server(self) -> ServerSettings: ...


Settings = TypeVar("Settings", bound=ServiceSettings)


def run_service(
    module: str,
    env_prefix: str,
    read_settings: Callable[[Mapping[str, str]], Settings],
    serve: Callable[[Settings], Coroutine[Any, Any, None]],
    *,
    once_per_server: Callable[[Settings], None] | None = None,
    summary: str = "",
    argv: list[str] | None = None,
) -> None:
    """Runs the service whose server module is `module` (what `python -m` starts in each
    worker) with the settings `read_settings` makes of the environment (`env_prefix`:
    INVENTORY, CRM). `once_per_server` runs in the supervisor or the only process, never in
    a worker: checks that concern the whole server. Returns when `serve` does; exits with
    the workers' status when it supervised them. `summary` is what --help says it serves;
    there are no other options: the environment configures everything."""
    parse_service_arguments(env_prefix, summary, argv)
    settings = read_settings(os.environ)
    server = settings.server
    configure_logging(server.log_level)
    if once_per_server is not None and not is_worker(os.environ):
        once_per_server(settings)
    try:
        if server.processes > 1:
            sys.exit(
                supervise_workers(
                    module,
                    env_prefix,
                    server.processes,
                    server.listen_address,
                    server.metrics_address,
                    pin_cpus=server.pin_cpus,
                    stop_timeout_s=server.stop_timeout_s,
                )
            )
        stay_on_assigned_cpu(os.environ)
        asyncio.run(serve(settings))
    except BindError as error:  # the gRPC or the metrics address
        log.error("%s", error, extra={"address": error.address})
        sys.exit(1)


def parse_service_arguments(env_prefix: str, summary: str, argv: list[str] | None = None) -> None:
    """--help, and a refusal of anything else; returns when there are no arguments."""
    parser = argparse.ArgumentParser(
        description=summary,
        epilog=(
            f"Configured by environment variables only ({env_prefix}_LISTEN_ADDRESS, "
            f"{env_prefix}_METRICS_ADDRESS, JWT_SECRET_FILE, ...): docs/configuration.md lists "
            "every one and its default. Serves until SIGTERM or SIGINT, then stops gracefully."
        ),
    )
    parser.parse_args(argv)
