"""Server pieces both services wire the same way: a grpc.aio server with its limits, health,
reflection, graceful shutdown, several worker processes on one port."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from servicekit.observability import ServerMetrics, metrics_served
from servicekit.pipeline import Authorizer, CallLimits, CallPipeline
from servicekit.settings import EnvReader, SettingsError
from servicekit.tracing import Tracing

log = logging.getLogger(__name__)
Value = TypeVar("Value")


@dataclass(frozen=True)
class ServerLimits:
    """What keeps a server answering whatever its clients do. Beyond a cap a call answers
    RESOURCE_EXHAUSTED with a google.rpc.RetryInfo; grpc-go's server options are the model."""

    # HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_streams_per_connection: int = 100
    # A connection is told to go away (GOAWAY) after this long, so that round-robin clients find
    # replicas added since; its calls then get `max_connection_age_grace_s` before it is closed,
    # which also ends connections whose streams never completed a request.
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 30.0
    # Keepalive enforcement: a client pinging more often than this (while no call is open) is
    # told to calm down and then disconnected.
    min_client_ping_interval_s: float = 10.0
    # The server's own pings find connections whose peer vanished without a word.
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    calls: CallLimits = field(default_factory=CallLimits)

    @classmethod
    def from_env(cls, read: EnvReader) -> ServerLimits:
        return cls(
            max_streams_per_connection=read.int(
                "MAX_STREAMS_PER_CONNECTION", cls.max_streams_per_connection, minimum=1
            ),
            max_connection_age_s=read.float("MAX_CONNECTION_AGE_S", cls.max_connection_age_s),
            max_connection_age_grace_s=read.float("MAX_CONNECTION_AGE_GRACE_S", cls.max_connection_age_grace_s),
            min_client_ping_interval_s=read.float("MIN_CLIENT_PING_INTERVAL_S", cls.min_client_ping_interval_s),
            keepalive_s=read.float("KEEPALIVE_S", cls.keepalive_s),
            keepalive_timeout_s=read.float("KEEPALIVE_TIMEOUT_S", cls.keepalive_timeout_s),
            calls=CallLimits(
                max_calls_in_flight=read.int("MAX_CALLS_IN_FLIGHT", CallLimits.max_calls_in_flight, minimum=1),
                max_calls_per_subject=read.int("MAX_CALLS_PER_SUBJECT", CallLimits.max_calls_per_subject, minimum=1),
                calls_per_subject_override=read.subject_caps("CALLS_PER_SUBJECT_OVERRIDE"),
            ),
        )

    def channel_options(self) -> list[tuple[str, int]]:
        def ms(seconds: float) -> int:
            return int(seconds * 1000)

        return [
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_s)),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", ms(self.min_client_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_time_ms", ms(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
        ]


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
) -> grpc.aio.Server:
    """A grpc.aio server whose calls pass the trace span (when tracing is on), then the
    call pipeline (request id, metrics and access log, auth, caps, error mapping)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [tracing.server_interceptor] if tracing else []
    interceptors.append(CallPipeline(metrics, authorizer, limits.calls))
    return grpc.aio.server(interceptors=interceptors, options=limits.channel_options())


async def finish_server(server: grpc.aio.Server, listen_address: str, service_names: Iterable[str]) -> RunningServer:
    """Adds health (SERVING for the server and each service) and reflection, then binds."""
    names = tuple(service_names)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", *names):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names, SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(listen_address)
    return RunningServer(server, port, health_servicer)


async def serve_until_signalled(
    running: RunningServer, name: str, listen_address: str, drain_s: float, grace_s: float
) -> None:
    """Starts the server and returns once SIGTERM or SIGINT has stopped it gracefully."""
    await running.server.start()
    host = listen_address.rsplit(":", 1)[0]
    log.info("%s listening on %s:%d", name, host, running.port, extra={"port": running.port})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop_on, signum, stopping, name)
    await stopping.wait()
    await running.shutdown(drain_s, grace_s)
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


# Set by supervise_workers in each worker's environment: the core that worker stays on.
WORKER_CPU_VARIABLE = "SERVICEKIT_WORKER_CPU"
# ...and that it is one of the supervisor's workers, which does what concerns the whole server.
WORKER_VARIABLE = "SERVICEKIT_WORKER"


def is_worker(env: Mapping[str, str]) -> bool:
    """Whether this process is a worker of supervise_workers (not the server as a whole)."""
    return env.get(WORKER_VARIABLE) == "1"


def stay_on_assigned_cpu(env: Mapping[str, str]) -> None:
    """In a worker process, before any thread starts (threads inherit it): keep to the core
    the supervisor assigned, if it assigned one."""
    cpu = env.get(WORKER_CPU_VARIABLE, "")
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})


def supervise_workers(
    module: str,
    prefix: str,
    processes: int,
    listen_address: str,
    metrics_address: str,
    stop_timeout_s: float = 30.0,
    pin_cpus: bool = False,
) -> int:
    """Runs `processes` copies of the server `module` on one port (SO_REUSEPORT, which
    gRPC sets by default on Linux): a Python process uses about one core, and this uses
    them all. Each worker is a whole server (its own pool, listener and threads); their
    metrics are summed here. SIGTERM or SIGINT is passed on to every worker, which drain as
    one server does; a worker that dies stops them all, for the platform to restart. A
    worker still running `stop_timeout_s` after its SIGTERM (its drain and grace periods
    and a margin) is killed. `pin_cpus`: worker k stays on the k-th core this process may use
    (round robin), so that its threads hand the GIL over on one core. Returns the exit status."""
    if listen_address.endswith(":0"):
        raise SettingsError(f"{prefix}_PROCESSES > 1 needs a fixed port in {prefix}_LISTEN_ADDRESS, not 0")
    workers: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()
    kill_at = float("inf")

    def stop_workers(signum: int, _frame: FrameType | None) -> None:
        nonlocal kill_at
        if not stopping.is_set():
            kill_at = time.monotonic() + stop_timeout_s
            stopping.set()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    def kill_stragglers() -> None:
        for worker in workers:
            if worker.poll() is None:
                log.error(
                    "worker %d still running %.0f s after it was told to stop: killing it", worker.pid, stop_timeout_s
                )
                worker.kill()
                worker.wait()

    def exit_status(returncode: int) -> int:
        # A worker ended by a signal has returncode -signum; report it as a shell does.
        return 128 - returncode if returncode < 0 else returncode

    # Before any worker exists, so that a signal arriving while they start reaches them all.
    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    with tempfile.TemporaryDirectory(prefix=f"{prefix.lower()}-metrics-") as metrics_dir:
        worker_env = {
            **{name: value for name, value in os.environ.items() if name != WORKER_CPU_VARIABLE},
            f"{prefix}_PROCESSES": "1",
            f"{prefix}_METRICS_ADDRESS": "off",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            WORKER_VARIABLE: "1",
        }
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)
        # Bound first: a metrics port in use fails here, before there are workers to orphan.
        with metrics_served(metrics_address, registry):
            try:
                cpus = sorted(os.sched_getaffinity(0)) if pin_cpus else []
                for number in range(processes):
                    if not stopping.is_set():
                        env = {**worker_env, WORKER_CPU_VARIABLE: str(cpus[number % len(cpus)])} if cpus else worker_env
                        workers.append(subprocess.Popen([sys.executable, "-m", module], env=env))
                log.info(
                    "%d worker processes of %s started",
                    len(workers),
                    module,
                    extra={"worker_pids": [worker.pid for worker in workers]},
                )
                status = 0
                while any(worker.poll() is None for worker in workers):
                    for worker in workers:
                        code = worker.poll()
                        if code is not None and not stopping.is_set():
                            log.error("worker %d exited with %d: stopping the others", worker.pid, code)
                            status = exit_status(code) or 1
                            stop_workers(signal.SIGTERM, None)
                    if time.monotonic() > kill_at:
                        kill_stragglers()
                    time.sleep(0.2)
                if status == 0:
                    status = next((exit_status(worker.returncode) for worker in workers if worker.returncode), 0)
            finally:
                # Live workers here mean the supervisor itself failed: they must not outlive
                # it, nor write into the metrics directory once it is removed.
                if any(worker.poll() is None for worker in workers):
                    log.error("supervisor failed: stopping its workers")
                    stop_workers(signal.SIGTERM, None)
                    for worker in workers:
                        try:
                            worker.wait(timeout=max(0.0, kill_at - time.monotonic()))
                        except subprocess.TimeoutExpired:
                            pass
                    kill_stragglers()
                for worker in workers:
                    mark_process_dead(worker.pid, metrics_dir)
        return status
