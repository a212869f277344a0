"""Load for calls that h2load cannot make: each with a body of its own. h2load sends one fixed
body per process, and a reservation is confirmed once, so ConfirmReservation needs a new id
per call. This client (grpc.aio, in a process of its own, like h2load) sends the bodies in
order, each once, or one body again and again for its null-server row. It costs about four
times h2load's CPU per call (some 150 µs here), which the servers then lack on a shared
machine, so its rows are measured against the null grpc.aio server loaded by this client too.

    python scripts/bench_support/grpc_load.py SPEC.json    # run by the benchmark: run() below

The calls in flight are split over one connection each, as h2load's processes split them
(up to --max-h2load): a server of several processes gets connections, not calls, spread
over its processes. A call counts when it was sent and answered OK within the measured
time; those still in flight when the time is up are awaited, not cut, and left out.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: scripts/ holds bench_support, as for scripts/bench.py.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench_support import h2load

_HERE = Path(__file__).resolve()


@dataclass
class ClientRun:
    """A run's calls as h2load's result (failed: every non-OK call the client saw, warm-up
    included), those calls by status, the calls sent (warm-up included; one body each)
    and whether the bodies ran out."""

    result: h2load.LoadResult
    not_ok_by_code: dict[str, int] = field(default_factory=dict)
    calls_sent: int = 0
    ran_out: bool = False


def run(
    address: str,
    load: h2load.Load,
    in_flight: int,
    workdir: Path,
    *,
    max_processes: int,
    duration_s: float,
    warmup_s: float,
    each_body_once: bool,
) -> ClientRun:
    """Calls for `warmup_s` (not measured), then for `duration_s`. With `each_body_once`,
    the run ends early when the bodies run out."""
    workdir.mkdir(parents=True, exist_ok=True)
    bodies = workdir / "grpc-load-bodies.bin"
    bodies.write_bytes(b"".join(load.bodies))
    spec = workdir / "grpc-load.json"
    out = workdir / "grpc-load-result.json"
    out.unlink(missing_ok=True)
    spec.write_text(
        json.dumps(
            {
                "address": address,
                "path": load.path,
                "token": load.token,
                "bodies": str(bodies),
                "in_flight": in_flight,
                "connections": min(in_flight, max_processes),
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "each_body_once": each_body_once,
                "out": str(out),
            }
        )
    )
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = subprocess.run([sys.executable, str(_HERE), str(spec)], capture_output=True, text=True)
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0 or not out.exists():
        raise SystemExit(f"bench: the gRPC load client failed ({finished.returncode}):\n{finished.stderr}")
    answer = json.loads(out.read_text())
    cpu = (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)
    latencies = [float(ms) for ms in answer["latencies_ms"]]
    not_ok = {str(code): int(count) for code, count in answer["not_ok_by_code"].items()}
    result = h2load.LoadResult(
        len(latencies), sum(not_ok.values()), answer["seconds"], latencies, [(0, len(latencies))], cpu
    )
    return ClientRun(result, not_ok, int(answer["calls_sent"]), bool(answer["ran_out"]))


def _messages(frames: bytes) -> list[bytes]:
    """The messages of concatenated gRPC frames (flag, 4-byte length, message)."""
    messages, at = [], 0
    while at < len(frames):
        length = int.from_bytes(frames[at + 1 : at + 5], "big")
        messages.append(frames[at + 5 : at + 5 + length])
        at += 5 + length
    return messages


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    messages = _messages(Path(spec["bodies"]).read_bytes())
    source: Iterator[bytes] = iter(messages) if spec["each_body_once"] else iter(lambda: messages[0], None)
    metadata = (("authorization", f"Bearer {spec['token']}"),) if spec["token"] else None
    # Each channel its own connection: by default channels to one address share one.
    channels = [
        grpc.aio.insecure_channel(spec["address"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(spec["connections"])
    ]
    calls: list[Any] = [channel.unary_unary(spec["path"]) for channel in channels]
    start = time.perf_counter()
    measured_from = start + spec["warmup_s"]
    deadline = measured_from + spec["duration_s"]
    answered: list[tuple[float, float]] = []  # (sent, answered) of each OK call
    not_ok: dict[str, int] = {}
    sent = 0
    ran_out_at: float | None = None

    async def keep_calling(call: Any) -> None:
        nonlocal sent, ran_out_at
        while (started := time.perf_counter()) < deadline:
            body = next(source, None)
            if body is None:
                ran_out_at = ran_out_at or started
                return
            sent += 1
            try:
                await call(body, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as error:
                not_ok[error.code().name] = not_ok.get(error.code().name, 0) + 1
                continue
            answered.append((started, time.perf_counter()))

    try:
        await asyncio.gather(*(keep_calling(calls[n % len(calls)]) for n in range(spec["in_flight"])))
    finally:
        for channel in channels:
            await channel.close()
    measured_until = min(deadline, ran_out_at) if ran_out_at else deadline
    return {
        "latencies_ms": [
            (ended - started) * 1000
            for started, ended in answered
            if measured_from <= started and ended <= measured_until
        ],
        "seconds": max(measured_until - measured_from, 1e-9),
        "not_ok_by_code": not_ok,
        "calls_sent": sent,
        "ran_out": ran_out_at is not None,
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    answer = asyncio.run(_load(spec))
    Path(spec["out"]).write_text(json.dumps(answer))


if __name__ == "__main__":
    main()
