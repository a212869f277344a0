"""Server pieces both services wire the same way: health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from typing import Callable, Iterable, Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from servicekit.call_context import CallContextInterceptor
from servicekit.observability import ObservabilityInterceptor, ServerMetrics, metrics_served
from servicekit.settings import SettingsError
from servicekit.status import StatusMappingInterceptor
from servicekit.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    # Called when shutdown begins, e.g. to end long-lived streams cleanly.
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)

    def shutdown(self, drain_s: float, grace_s: float) -> None:
        """Probes see NOT_SERVING first; after drain_s new calls are refused and
        in-flight ones get grace_s to finish."""
        self.health.enter_graceful_shutdown()
        for callback in self.on_shutdown:
            callback()
        time.sleep(drain_s)
        self.server.stop(grace_s).wait()


def new_server(
    max_workers: int, metrics: ServerMetrics, auth: grpc.ServerInterceptor | None, tracing: Tracing | None = None,
) -> grpc.Server:
    """A server whose calls pass, outermost first: the trace span, the request id and
    deadline, metrics and the access log (which see the final status), the mapping of
    errors to statuses (which also maps what auth raises), then auth."""
    interceptors: list[grpc.ServerInterceptor] = [tracing.server_interceptor] if tracing else []
    interceptors += [CallContextInterceptor(), ObservabilityInterceptor(metrics), StatusMappingInterceptor()]
    if auth is not None:
        interceptors.append(auth)
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=interceptors,
        # Clients resolve DNS again only when a connection ends: ending each after five minutes
        # (streams on it may run on) lets round-robin clients find replicas added since.
        options=[("grpc.max_connection_age_ms", 300_000)],
    )


def finish_server(server: grpc.Server, listen_address: str, service_names: Iterable[str]) -> RunningServer:
    """Adds health (SERVING for the server and each service) and reflection, then binds."""
    names = tuple(service_names)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", *names):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(listen_address)
    return RunningServer(server, port, health_servicer)


def serve_until_signalled(running: RunningServer, name: str, listen_address: str,
                          drain_s: float, grace_s: float) -> None:
    """Starts the server and blocks until SIGTERM or SIGINT has stopped it gracefully."""
    running.server.start()
    host = listen_address.rsplit(":", 1)[0]
    log.info("%s listening on %s:%d", name, host, running.port, extra={"port": running.port})
    stopping = threading.Event()

    def stop_gracefully(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("%s stopping on %s", name, signal.Signals(signum).name)
        threading.Thread(target=running.shutdown, args=(drain_s, grace_s), name="shutdown").start()

    signal.signal(signal.SIGTERM, stop_gracefully)
    signal.signal(signal.SIGINT, stop_gracefully)
    running.server.wait_for_termination()
    log.info("%s stopped", name)


class Periodic:
    """Runs `task` every `interval_s` seconds in a daemon thread until stopped."""

    def __init__(self, name: str, interval_s: float, task: Callable[[], object]) -> None:
        self._interval_s = interval_s
        self._task = task
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self._task()
            except Exception:
                log.exception("periodic task %s failed; it runs again in %.0f s", self._thread.name, self._interval_s)


# Set by supervise_workers in each worker's environment: the core that worker stays on.
WORKER_CPU_VARIABLE = "SERVICEKIT_WORKER_CPU"


def stay_on_assigned_cpu(env: Mapping[str, str]) -> None:
    """In a worker process, before any thread starts (threads inherit it): keep to the core
    the supervisor assigned, if it assigned one."""
    cpu = env.get(WORKER_CPU_VARIABLE, "")
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})


def supervise_workers(module: str, prefix: str, processes: int, listen_address: str, metrics_address: str,
                      stop_timeout_s: float = 30.0, pin_cpus: bool = False) -> int:
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
                log.error("worker %d still running %.0f s after it was told to stop: killing it",
                          worker.pid, stop_timeout_s)
                worker.kill()
                worker.wait()

    def exit_status(returncode: int) -> int:
        # A worker ended by a signal has returncode -signum; report it as a shell does.
        return 128 - returncode if returncode < 0 else returncode

    # Before any worker exists, so that a signal arriving while they start reaches them all.
    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    with tempfile.TemporaryDirectory(prefix=f"{prefix.lower()}-metrics-") as metrics_dir:
        worker_env = {**{name: value for name, value in os.environ.items() if name != WORKER_CPU_VARIABLE},
                      f"{prefix}_PROCESSES": "1", f"{prefix}_METRICS_ADDRESS": "off",
                      "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
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
                log.info("%d worker processes of %s started", len(workers), module,
                         extra={"worker_pids": [worker.pid for worker in workers]})
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
