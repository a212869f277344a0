"""Load from h2load (Debian package nghttp2-client), a native HTTP/2 generator, so that the
client does not eat the CPU the servers need.

A gRPC unary call is an HTTP/2 POST of the length-prefixed request with
`content-type: application/grpc` and `te: trailers`. h2load sends one body per process
(`--data`), so a workload with several requests (random ids, +1 and -1) runs several
h2load processes side by side, one body each, and splits its calls in flight over them.
h2load only sees HTTP statuses: a call answered with a non-zero grpc-status counts as a
success there, so errors are counted on the server side, from its metrics.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

INSTALL_HINT = "h2load is missing: apt-get install -y nghttp2-client (Debian/Ubuntu package)"


def grpc_frame(message: Message) -> bytes:
    """A gRPC message as sent on the wire: uncompressed flag, 4-byte big-endian length, bytes."""
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def available() -> bool:
    return shutil.which("h2load") is not None


@dataclass(frozen=True)
class Load:
    """One workload's calls: a method, its bodies (one per h2load process, in turn) and a token."""

    path: str
    bodies: list[bytes]
    token: str = ""


@dataclass
class LoadResult:
    calls: int  # answered with HTTP 200
    failed: int  # HTTP errors, resets and timeouts, as h2load saw them
    seconds: float
    latencies_ms: list[float]
    # For each h2load process: the index of its body and its calls answered with HTTP 200.
    answered_by_body: list[tuple[int, int]] = field(default_factory=list)
    cpu_seconds: float = 0.0  # h2load's own CPU time

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if part < total % parts else 0) for part in range(parts)]


def run(
    address: str,
    load: Load,
    in_flight: int,
    workdir: Path,
    *,
    max_processes: int,
    duration_s: float | None = None,
    warmup_s: float = 0.0,
    calls: int | None = None,
) -> LoadResult:
    """Either for `duration_s` (after `warmup_s`, not measured) or for exactly `calls` calls,
    each of which is then answered before h2load ends (so that every call is counted)."""
    processes = min(in_flight, max_processes)
    streams = _split(in_flight, processes)
    calls_each = _split(calls, processes) if calls is not None else [0] * processes
    workdir.mkdir(parents=True, exist_ok=True)
    body_files = []
    for index, body in enumerate(load.bodies):
        path = workdir / f"body-{index}.bin"
        path.write_bytes(body)
        body_files.append(path)
    headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if load.token:
        headers += ["-H", f"authorization: Bearer {load.token}"]
    started: list[tuple[subprocess.Popen[str], Path, int]] = []
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for number in range(processes):
        body_index = number % len(load.bodies)
        log = workdir / f"h2load-{number}.log"
        log.unlink(missing_ok=True)
        command = [
            "h2load",
            f"--data={body_files[body_index]}",
            "-c",
            "1",
            "-t",
            "1",
            "-m",
            str(streams[number]),
            f"--log-file={log}",
            *headers,
        ]
        if calls is None:
            assert duration_s is not None
            command += [f"--duration={duration_s:g}s"]
            if warmup_s:
                command += [f"--warm-up-time={warmup_s:g}s"]
        else:
            command += ["-n", str(max(calls_each[number], 1))]
        command.append(f"http://{address}{load.path}")
        popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append((popen, log, body_index))
    outputs = [(popen.communicate()[0], popen.returncode, log, body_index) for popen, log, body_index in started]
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)

    latencies: list[float] = []
    answered_by_body: list[tuple[int, int]] = []
    failed = 0
    rate_sum = 0.0
    first_start, last_end = float("inf"), 0.0
    for output, code, log, body_index in outputs:
        if code != 0:
            raise SystemExit(f"bench: h2load failed ({code}):\n{output}")
        answered = logged_failures = 0
        for line in log.read_text().splitlines():
            start_us, status, duration_us = line.split("\t")[:3]
            if status == "200":
                answered += 1
                latencies.append(int(duration_us) / 1000)
                first_start = min(first_start, int(start_us) / 1e6)
                last_end = max(last_end, (int(start_us) + int(duration_us)) / 1e6)
            else:
                logged_failures += 1
        # h2load's own count of failed calls (non-2xx, reset, timed out) covers those it logged or not.
        failed += max(_count(output, "requests:", "failed"), logged_failures)
        answered_by_body.append((body_index, answered))
        rate_sum += _rate(output)
    # A timed run's rate is h2load's own (measured over the same duration in every process);
    # a counted run's is its calls over the time from the first call sent to the last answer.
    seconds = (
        (sum(n for _, n in answered_by_body) / rate_sum if rate_sum else 0.0)
        if calls is None
        else max(last_end - first_start, 1e-9)
    )
    return LoadResult(len(latencies), failed, seconds, latencies, answered_by_body, cpu)


def _count(output: str, prefix: str, name: str) -> int:
    for line in output.splitlines():
        if line.startswith(prefix):
            for part in line[len(prefix) :].split(","):
                words = part.split()
                if len(words) == 2 and words[1] == name:
                    return int(words[0])
    return 0


def _rate(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("finished in"):
            return float(line.split(",")[1].split()[0])
    return 0.0


def summary(output: str) -> str:
    """h2load's own count of a run's calls, in a few words."""
    return (
        f"{_count(output, 'requests:', 'succeeded')} calls answered HTTP 200 "
        f"({_count(output, 'requests:', 'failed')} failed) at {_rate(output):,.0f}/s"
    )


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(round(fraction * len(ordered) + 0.5) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def settle(seconds: float = 0.3) -> None:
    """After a timed run h2load drops calls still in flight; let the servers finish them."""
    time.sleep(seconds)
