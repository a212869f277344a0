"""The servers under test, run as processes the way scripts/run runs them: the same console
scripts and environment settings, on free loopback ports, stopped with SIGTERM."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BIN = Path(sys.executable).parent
# Settings of the user's environment that would override the benchmark's own.
_OVERRIDDEN = re.compile(
    r"^((INVENTORY|CRM|CRM_INVENTORY)_)?(JWT_.*|DATABASE_URL|LISTEN_ADDRESS|METRICS_ADDRESS"
    r"|INVENTORY_TARGET|INVENTORY_TOKEN_FILE)$"
)


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port bound to 0 and released could
    be taken by any outgoing connection (to PostgreSQL, say) before its server binds it."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, ephemeral_low // 2), max(1025, ephemeral_low))
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise SystemExit(f"bench: no free port below the ephemeral range ({ephemeral_low})")


def service_env(jwt_secret_file: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not _OVERRIDDEN.match(name)}
    env["JWT_SECRET_FILE"] = str(jwt_secret_file)
    return env


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    address: str
    log_path: Path
    metrics_address: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        """The server and its worker processes (*_PROCESSES > 1 runs them as its children)."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.pid:
                    children.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return [self.pid, *children]

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server and its workers (all their threads) so far."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> dict[str, float]:
        """VmRSS (resident now) and VmHWM (the peak) in MB of its largest process, from /proc/PID/status."""
        largest: dict[str, float] = {}
        for pid in self.pids():
            values = {}
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024
            largest = {key: max(value, largest.get(key, 0.0)) for key, value in values.items()}
        return largest

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Services:
    processes: list[Process] = field(default_factory=list)

    def start(
        self, name: str, command: list[str], env: dict[str, str], address: str, log_dir: Path, metrics_address: str = ""
    ) -> Process:
        log_path = log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        process = Process(name, popen, address, log_path, metrics_address)
        self.processes.append(process)
        return process

    def stop(self, grace_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM to each, then wait; returns each exit code (None: it had to be killed)."""
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for process in self.processes:
            try:
                codes[process.name] = process.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
                codes[process.name] = None
        return codes


def wait_serving(process: Process, timeout_s: float = 30.0) -> None:
    """Until gRPC health answers SERVING for the whole server."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(process.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.popen.poll() is not None:
                raise SystemExit(f"bench: {process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {process.name} is not SERVING after {timeout_s:.0f} s:\n{process.log_tail()}")
            time.sleep(0.2)


def wait_answering(process: Process, path: str, request: bytes, timeout_s: float = 30.0) -> None:
    """For a server without health checking (the null servers): until `path` answers."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(process.address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
        while True:
            try:
                call(request, timeout=1)
                return
            except grpc.RpcError as error:
                if process.popen.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bench: {process.name} does not answer:\n{process.log_tail()}") from error
                time.sleep(0.2)


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is counted in user already
    return total - idle, total


def postgres_cpu_seconds() -> float | None:
    """CPU time so far of the PostgreSQL server's processes on this machine (None: there are none).

    A backend that exits meanwhile (a connection closed) takes its CPU time along, except
    into its parent's count of reaped children: so the postmaster's children time is added."""
    processes: dict[int, tuple[int, float, float]] = {}  # pid -> (parent, own, reaped children)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, _, rest = text.partition(" (")[2].rpartition(")")
        if name == "postgres":
            fields = rest.split()
            tick = os.sysconf("SC_CLK_TCK")
            processes[int(stat.parent.name)] = (
                int(fields[1]),
                (int(fields[11]) + int(fields[12])) / tick,
                (int(fields[13]) + int(fields[14])) / tick,
            )
    if not processes:
        return None
    return sum(own + (children if parent not in processes else 0.0) for parent, own, children in processes.values())


def background_busy_percent(seconds: float = 1.0) -> float:
    """How busy the machine is with other work (nothing of the benchmark's runs meanwhile)."""
    busy_before, total_before = machine_busy_ticks()
    time.sleep(seconds)
    busy_after, total_after = machine_busy_ticks()
    return (busy_after - busy_before) / max(total_after - total_before, 1) * 100


def scrape_handled(metrics_address: str) -> dict[tuple[str, str, str], float] | None:
    """grpc_server_handled_total by (service, method, code), or None when there is no /metrics."""
    if not metrics_address:
        return None
    try:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=2) as reply:
            body = reply.read().decode()
    except OSError:
        return None
    counts: dict[tuple[str, str, str], float] = {}
    for line in body.splitlines():
        if not line.startswith("grpc_server_handled_total{"):
            continue
        labels_text, _, value = line[len("grpc_server_handled_total{") :].rpartition("}")
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text))
        key = (labels.get("grpc_service", ""), labels.get("grpc_method", ""), labels.get("grpc_code", ""))
        counts[key] = float(value.split()[0])
    return counts


def handled_delta(
    before: dict[tuple[str, str, str], float] | None, after: dict[tuple[str, str, str], float] | None
) -> dict[tuple[str, str, str], int] | None:
    if before is None or after is None:
        return None
    delta = {key: int(after[key] - before.get(key, 0)) for key in after}
    return {key: count for key, count in delta.items() if count and not key[0].startswith("grpc.health")}
