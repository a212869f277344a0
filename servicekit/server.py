"""Server pieces both services wire the same way: a grpc.aio server with its limits, health,
reflection and graceful shutdown (servicekit.workers runs several of them on one port)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME
from grpc_health.v1.health import aio as health_aio

from servicekit.observability import ServerMetrics
from servicekit.pipeline import Authorizer, CallPipeline
from servicekit.reflection import enable_reflection
from servicekit.server_settings import ServerLimits, ServerSettings
from servicekit.settings import BindError
from servicekit.tls import ServerTls, server_credentials
from servicekit.tracing import Tracing
from servicekit.unknown_method import UnknownMethods

log = logging.getLogger(__name__)
Value = TypeVar("Value")


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    # Called when shutdown begins, e.g. to end long-lived streams cleanly.
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)

    async def shutdown(self, drain_s: float, grace_s: float) -> None:
        """Probes see NOT_SERVING first, while calls are still served for drain_s; then
        long-lived streams are ended, new calls are refused (clients see UNAVAILABLE and retry
        elsewhere) and in-flight ones get grace_s to finish."""
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(drain_s)
        for callback in self.on_shutdown:
            callback()
        await self.server.stop(grace_s)


def new_server(
    metrics: ServerMetrics,
    authorizer: Authorizer | None,
    limits: ServerLimits,
    tracing: Tracing | None = None,
    *,
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """A grpc.aio server whose calls pass the trace span (when tracing is on), then the
    call pipeline (request id, metrics and access log, auth, caps, error mapping).
    `reuse_port`: other processes may listen on the same port (grpc's default; off here so
    that a taken port fails to bind)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [tracing.server_interceptor] if tracing else []
    interceptors.append(CallPipeline(metrics, authorizer, limits.calls))
    options = [*limits.channel_options(), ("grpc.so_reuseport", int(reuse_port))]
    return grpc.aio.server(interceptors=interceptors, options=options)


async def finish_server(
    server: grpc.aio.Server, listen_address: str, service_names: Iterable[str], *, tls: ServerTls | None = None
) -> RunningServer:
    """Adds health (SERVING for the server and each service) and reflection, then binds:
    with TLS (and mTLS) when `tls` names certificate files, else in plaintext."""
    names = tuple(service_names)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", *names):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection((*names, SERVICE_NAME), server)
    server.add_generic_rpc_handlers((UnknownMethods(names),))  # last: only what nothing else serves
    try:
        port = bind(server, listen_address, tls or ServerTls())
    except RuntimeError as error:  # grpc's "Failed to bind": say which address, and why it likely failed
        raise BindError(listen_address) from error
    if port == 0:  # older grpc versions return 0 instead of raising
        raise BindError(listen_address)
    return RunningServer(server, port, health_servicer)


def bind(server: grpc.aio.Server, listen_address: str, tls: ServerTls) -> int:
    if tls.enabled:
        return server.add_secure_port(listen_address, server_credentials(tls))
    return server.add_insecure_port(listen_address)


async def serve_until_signalled(running: RunningServer, name: str, settings: ServerSettings) -> None:
    """Starts the server and returns once SIGTERM or SIGINT has stopped it gracefully
    (settings.shutdown_drain_s, then settings.shutdown_grace_s)."""
    await running.server.start()
    host = settings.listen_address.rsplit(":", 1)[0]
    security = "mTLS" if settings.tls.client_ca_file else "TLS" if settings.tls.enabled else "plaintext"
    log.info("%s listening on %s:%d (%s)", name, host, running.port, security, extra={"port": running.port})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop_on, signum, stopping, name)
    await stopping.wait()
    await running.shutdown(settings.shutdown_drain_s, settings.shutdown_grace_s)
    log.info("%s stopped", name)


def _stop_on(signum: int, stopping: asyncio.Event, name: str) -> None:
    if not stopping.is_set():
        log.info("%s stopping on %s", name, signal.Signals(signum).name)
        stopping.set()


class ServerThread:
    """A grpc.aio server on an event loop of its own, in a daemon thread: for test suites and
    synchronous programs that embed a server.

        with ServerThread(lambda: build_server(settings, items)) as served:
            channel = grpc.insecure_channel(f"127.0.0.1:{served.port}")

    `build` is a coroutine function returning the RunningServer; it runs on that loop, as
    grpc.aio objects belong to the loop that made them."""

    def __init__(self, build: Callable[[], Awaitable[RunningServer]]) -> None:
        self._build = build
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio-server", daemon=True)
        self.running: RunningServer | None = None

    @property
    def port(self) -> int:
        assert self.running is not None, "the server has not started"
        return self.running.port

    def run(self, coroutine: Awaitable[Value]) -> Value:
        """Runs `coroutine` on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()  # type: ignore[arg-type]

    def start(self) -> ServerThread:
        self._thread.start()

        async def started() -> RunningServer:
            running = await self._build()
            await running.server.start()
            return running

        self.running = self.run(started())
        return self

    def shutdown(self, drain_s: float, grace_s: float) -> None:
        """As on SIGTERM: NOT_SERVING, then drain, then grace for the calls in flight."""
        assert self.running is not None
        self.run(self.running.shutdown(drain_s, grace_s))

    def stop(self, grace_s: float = 1.0) -> None:
        if self.running is not None:
            self.run(self.running.server.stop(grace_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
