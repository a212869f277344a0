"""Sampling profiles of a server process under load, with py-spy (pip install py-spy).

py-spy writes collapsed stacks ("frame;frame;frame count" per line), which speedscope
and flamegraph.pl open as they are; this module also sums them into the frames that take
the most samples, on their own (the leaf) and in total (anywhere in the stack), and into
layers by file path (grpc, protobuf, SQLAlchemy, the driver, auth, logging, ...).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# First match wins: a frame's file (py-spy shows paths from the package root) -> its layer.
LAYERS = [
    ("grpc (python side of the server)", re.compile(r"\(grpc/|cygrpc")),
    ("protobuf and convert.py", re.compile(r"\((google/)?protobuf/|_pb2\.py|/convert\.py")),
    ("sqlalchemy", re.compile(r"\(sqlalchemy/")),
    ("database driver (psycopg2, sqlite3)", re.compile(r"psycopg2|sqlite3")),
    ("auth (servicekit.auth, servicekit.jwt, jwt)", re.compile(r"servicekit/(auth|jwt)\.py|\(jwt/|cryptography")),
    ("logging (access log, JSON)", re.compile(r"\(logging/|servicekit/logging|\(json/")),
    ("metrics (prometheus_client)", re.compile(r"servicekit/observability|prometheus_client")),
    ("tracing (opentelemetry)", re.compile(r"opentelemetry|servicekit/tracing")),
    ("servicekit (call context, status)", re.compile(r"servicekit/|\(uuid\.py")),
    ("service, domain, repository", re.compile(r"inventory_svc/|crm_svc/")),
    ("threads and queues", re.compile(r"threading\.py|concurrent/futures|queue\.py")),
]
# Steps of a call, each counted in a sample when any frame of its stack is one of these
# functions (so they include what they call); the shares may overlap.
STEPS = [
    (
        "SQL statements: build, compile/cache key, execute, fetch",
        (
            "Connection.execute (",
            "Connection.exec_driver_sql (",
            "Result.",
            "CursorResult.",
            "ScalarResult.",
            "select (",
            "update (",
            "insert (",
            "delete (",
            "where (",
            "_page_statement (",
            "_count_statement (",
            "_filter_values (",
        ),
    ),
    (
        "DB connection: checkout, pre-ping, begin, rollback, return",
        (
            "Engine.connect (",
            "Pool.connect (",
            "do_ping (",
            "Connection.begin (",
            "Transaction.rollback (",
            "Connection.close (",
            "_ConnectionFairy._checkin (",
        ),
    ),
    ("rows -> domain objects", ("_item_from_row (", "_movement_from_row (")),
    ("domain -> protobuf (convert.py)", ("item_to_proto (", "customer_item_to_proto (")),
    ("calls to inventory (CRM)", ("InventoryClient.",)),
    ("access log line", ("Logger.info (", "Logger._log (")),
    ("metrics", ("MetricWrapperBase.labels (", "Counter.inc (", "Histogram.observe (", "Gauge.inc (", "Gauge.dec (")),
    ("token check", ("TokenVerifier.verify (",)),
    ("request id, call context", ("uuid4 (",)),
    (
        "grpc server outside the handler",
        (
            "_serve (",
            "_process_event_and_continue (",
            "_handle_call (",
            "ThreadPoolExecutor.submit (",
            "_status (",
            "_send_response (",
        ),
    ),
]
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, output: Path, *, gil_only: bool = True) -> subprocess.Popen[str]:
    """Samples `pid` and its worker processes (a server run with *_PROCESSES > 1 serves from
    its children) for `seconds` at 200 Hz; `gil_only`: only the thread holding the GIL, i.e.
    where the Python CPU goes (waiting threads are left out either way)."""
    executable = py_spy()
    if executable is None:
        raise SystemExit("bench: --profile needs py-spy: .venv/bin/pip install py-spy")
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(int(seconds), 1)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(output),
        "--nonblocking",
        "--subprocesses",
    ]
    if gil_only:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _short(frame: str) -> str:
    """Without the line number, so that a function's samples add up."""
    match = _FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def _layer(frame: str) -> str:
    if not frame:
        return "no Python frame (C code holding the GIL)"
    for name, pattern in LAYERS:
        if pattern.search(frame):
            return name
    return "other"


@dataclass
class Summary:
    samples: int
    own: list[tuple[str, float]]  # (frame, % of samples), most first
    total: list[tuple[str, float]]  # thread start-up and pool frames left out: they are in every sample
    layers: list[tuple[str, float]]  # by the leaf frame
    steps: list[tuple[str, float]]  # by STEPS, inclusive


def summarise(collapsed: Path, top: int = 20) -> Summary:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        # py-spy puts "process" and "thread" frames first; the leaf is the last frame.
        code_frames = [f for f in frames if not f.startswith(("process ", "thread "))] or frames
        samples += count
        own[code_frames[-1]] += count
        layers[_layer(code_frames[-1])] += count
        for step, functions in STEPS:
            if any(frame.startswith(functions) for frame in code_frames):
                steps[step] += count
        for frame in set(code_frames):
            if _layer(frame) != "threads and queues":
                total[frame] += count
    percent = (lambda n: 100.0 * n / samples) if samples else (lambda n: 0.0)
    return Summary(
        samples,
        [(frame, percent(n)) for frame, n in own.most_common(top)],
        [(frame, percent(n)) for frame, n in total.most_common(top)],
        [(layer, percent(n)) for layer, n in layers.most_common()],
        [(step, percent(steps[step])) for step, _ in STEPS if steps[step]],
    )


def format_summary(title: str, summary: Summary) -> str:
    lines = [f"### {title}: {summary.samples} samples", "", "steps of a call (inclusive; they may overlap):"]
    lines += [f"  {share:5.1f}%  {step}" for step, share in summary.steps]
    lines += ["", "layers, by the file of the leaf frame (own time):"]
    lines += [f"  {share:5.1f}%  {layer}" for layer, share in summary.layers]
    lines += ["", "top frames by own time:"]
    lines += [f"  {share:5.1f}%  {frame}" for frame, share in summary.own]
    lines += ["", "top frames by total time (anywhere in the stack; thread and pool frames left out):"]
    lines += [f"  {share:5.1f}%  {frame}" for frame, share in summary.total]
    return "\n".join(lines)
