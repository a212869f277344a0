"""Several worker processes of one server on one port: the supervisor that starts them,
passes signals on, sums their metrics and stops them all when one dies, and what a worker
does to know it is one and to keep to the core it was given.

Why pin a worker to a core: a worker's threads (its event loop, its database threads) hand
the GIL over among themselves; on one core that costs little, across cores it costs lists
about a third of their speed. Pinning is off by default: it suits a server whose cores are
its own (a cpuset, a dedicated machine); on a shared node every pod would crowd onto the
same first cores.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from types import FrameType

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from servicekit.observability import metrics_served
from servicekit.settings import SettingsError

log = logging.getLogger(__name__)

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
            f"{prefix}_REUSE_PORT": "true",
            f"{prefix}_METRICS_ADDRESS": "off",
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            WORKER_VARIABLE: "1",
        }
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]  # unannotated upstream
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
                    mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]  # unannotated upstream
        return status
