"""What a run prints: the machine it ran on, the table (each row also against the null
grpc.aio server and, with --compare, an earlier run), the notes under it, and the table put
into docs/performance.md between its markers."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

import grpc

from bench_support.common import ROOT, fmt
from bench_support.measure import Row
from bench_support.reservations import Oversell
from bench_support.workloads import CONFIRM, NULL_AIO_CLIENT, TARGET_IN_FLIGHT

DOCS_PERFORMANCE = ROOT / "docs" / "performance.md"
TABLE_START, TABLE_END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False).stdout.strip(),
    }


NULL_AIO = "null server (grpc.aio) GetItem"
# The ceiling of each load client: the null grpc.aio server loaded by it.
NULL_AIO_BY_CLIENT = {"h2load": NULL_AIO, "grpc.aio": NULL_AIO_CLIENT}


def _target(row: Row) -> str:
    if row.target_per_s is None:
        return ""
    return f"{row.target_per_s:,.0f}: " + ("met" if row.calls_per_s >= row.target_per_s else "MISSED")


def table(rows: list[Row], earlier: dict[str, dict[int, float]] | None = None) -> str:
    """Each row also as a share of the null grpc.aio server at the same calls in flight,
    loaded by the same client: the machine's ceiling for a gRPC call in Python, measured in
    the same run. A row with a target (calls/s at TARGET_IN_FLIGHT) says if it met it."""
    ceiling = {
        (client, r.in_flight): r.calls_per_s
        for client, name in NULL_AIO_BY_CLIENT.items()
        for r in rows
        if r.workload == name
    }
    header = [
        "workload",
        "in flight",
        "calls/s",
        "÷ null aio",
        "target",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU µs/call",
        "PostgreSQL CPU µs/call",
        "new DB conns",
        "machine busy %",
        "client CPU %",
    ]
    if earlier is not None:
        header += ["earlier calls/s", "now / earlier"]
    body = [
        [
            r.workload + (" (profiled)" if r.profiled else ""),
            str(r.in_flight),
            fmt(r.calls_per_s, 0),
            fmt(r.calls_per_s / ceiling[r.load_client, r.in_flight])
            if ceiling.get((r.load_client, r.in_flight))
            else "n/a",
            _target(r),
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            "n/a" if r.errors is None else str(r.errors),
            fmt(r.server_cpu_us_per_call, 0),
            fmt(r.db_cpu_us_per_call, 0),
            "n/a" if r.db_sessions_opened is None else str(r.db_sessions_opened),
            fmt(r.machine_busy_percent, 0),
            fmt(r.h2load_cpu_percent, 0),
        ]
        + ([] if earlier is None else _comparison(earlier.get(_base_name(r.workload), {}).get(r.in_flight), r))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {0}

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i not in left else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def _base_name(workload: str) -> str:
    """Without the page number, which depends on the number of items."""
    return re.sub(r" page \d+$", " page N", workload)


def _comparison(earlier: float | None, row: Row) -> list[str]:
    if not earlier:
        return ["n/a", "n/a"]
    return [fmt(earlier, 0), f"{row.calls_per_s / earlier:.2f}"]


def with_bench_table(document: str, summary: list[str]) -> str:
    """`document` with the text between the bench markers replaced by a run's summary: the
    table as printed, each other line as a list item (Markdown would run them together)."""
    start, end = document.find(TABLE_START), document.find(TABLE_END)
    if start == -1 or end < start:
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} in the document")
    block = "\n".join(line if not line or line.startswith("|") else f"- {line}" for line in summary)
    return f"{document[: start + len(TABLE_START)]}\n{block.strip()}\n{document[end:]}"


def read_earlier(path: Path) -> dict[str, dict[int, float]]:
    earlier: dict[str, dict[int, float]] = {}
    for result in json.loads(path.read_text())["results"]:
        earlier.setdefault(_base_name(result["workload"]), {})[result["in_flight"]] = result["calls_per_s"]
    return earlier


NOTES = [
    (
        "Load: h2load (nghttp2) POSTs the length-prefixed request with content-type: application/grpc and "
        "te: trailers. It sends one fixed body per process, so a workload with several requests runs one h2load "
        "process per call in flight (up to --max-h2load), each with one body of the workload's pool (random ids, "
        "categories, +1/-1) and one connection; a pool is a fixed sample, not a fresh random id per call."
    ),
    (
        "Errors: h2load sees only HTTP statuses (a gRPC error is HTTP 200), so errors are the non-OK calls in the "
        "servers' grpc_server_handled_total over the cell (warm-up included), plus h2load's failed streams, less "
        "the calls h2load itself resets when a timed cell ends (at most one per call in flight, counted CANCELLED "
        "by the server and listed apart); 'n/a' when a server has no /metrics (the null servers). "
        "Each body is also sent once through a real gRPC client first."
    ),
    "Latency: per call from h2load's log, from sending the request to the end of the response (trailers).",
    (
        "CPU: server CPU µs/call is the user+system time of the servers of the workload (inventory, and the CRM "
        "for CRM calls) per call, PostgreSQL CPU µs/call that of the local PostgreSQL server's processes; "
        "machine busy % is the share of all cores busy with anything (100 = every core); client CPU % is the load "
        "client's (h2load's, or the grpc.aio client's), of one core. "
        "new DB conns: PostgreSQL sessions opened during the cell (pg_stat_database.sessions; warm-up included): "
        "anything above 0 once the pool is warm means connections are opened and closed per call."
    ),
    (
        "AdjustQuantity: after a warm-up, each cell sends an exact number of calls (h2load -n, every call answered "
        "before it ends), then checks that each touched item's quantity moved by (+1 calls OK) - (-1 calls OK). "
        "Bodies carry no request_id: a fixed body with one would be a replay, answered without a change."
    ),
    (
        f"{CONFIRM}: a reservation is confirmed once, and h2load sends one fixed body, so its calls come from a "
        "grpc.aio client (scripts/bench_support/grpc_load.py, a process of its own with one connection per call "
        "in flight up to --max-h2load), each with the next of the ACTIVE reservations made in bulk before the "
        "cells; a cell that runs out of them is measured until then. That client costs the machine several times "
        "h2load's CPU per call, so these rows are divided by the null grpc.aio server loaded by it "
        f"({NULL_AIO_CLIENT!r})."
    ),
    (
        f"Targets (the issue's, in calls/s at {TARGET_IN_FLIGHT} in flight) are shown on that row: met or MISSED. "
        "With reservation rows, the run ends (servers stopped) by checking every item in the database: reserved <= "
        "quantity (oversold: 0), reserved = the units of its ACTIVE reservations' lines, and its ledger's "
        "sum(delta) = quantity and sum(reserved_delta) = reserved; then it expires what is left ACTIVE at once, "
        "as the sweep would (ledger rows included; the sweep takes some hundreds a second), and checks again. "
        "The bench exits non-zero when a check fails."
    ),
]


def summary_lines(
    meta: dict[str, Any],
    rows: list[Row],
    earlier: dict[str, dict[int, float]] | None,
    memory: dict[str, dict[str, float]],
    adjust_log: list[dict[str, Any]],
    ledger: dict[str, Any] | None,
    auth_turns: list[dict[str, Any]],
    oversell: list[tuple[str, Oversell]] | None = None,
) -> list[str]:
    """The run's summary as printed (and put into the docs): how it ran, the table, and what
    the table cannot show (memory, lost updates, the ledger, cut calls, the auth turns, errors)."""
    background = meta["background_busy_percent"]
    lines = [
        f"date: {meta['date']}",
        (
            f"machine: {meta['machine']['nproc']} cores ({meta['machine']['cpu_model']}), "
            f"Linux {meta['machine']['kernel']}, Python {meta['machine']['python']}, "
            f"grpcio {meta['machine']['grpcio']}, {meta['machine']['h2load']}"
        ),
        (
            f"database: {meta['database']}; items: {meta['items']:,} over {meta['customers']} customers; "
            f"{meta['duration_s']:g} s per cell after {meta['warmup_s']:g} s of warm-up"
        ),
        (
            f"servers: INVENTORY_PROCESSES={meta['processes']['inventory']}, CRM_PROCESSES={meta['processes']['crm']}, "
            f"INVENTORY_PIN_CPUS={meta['pin_cpus']['inventory']}, CRM_PIN_CPUS={meta['pin_cpus']['crm']}, "
            "other settings at their defaults"
        ),
        f"other load on the machine (1 s idle sample): {background['before']:.0f}% before, "
        f"{background['after']:.0f}% after"
        + (
            "  <- WARNING: something else was running; the numbers are low"
            if max(background["before"], background["after"]) > 10
            else ""
        ),
        "",
        table(rows, earlier),
        "",
        "resident memory per server process (MB, now / peak): "
        + ", ".join(f"{name} {m.get('VmRSS', 0):.0f} / {m.get('VmHWM', 0):.0f}" for name, m in memory.items()),
    ]
    for entry in adjust_log:
        verdict = "exact" if entry["exact"] else "NOT exact: some calls errored, so the expected stock is uncertain"
        lines.append(
            f"AdjustQuantity @{entry['in_flight']}: {entry['calls']:,} calls on {entry['items']} items, "
            f"lost updates: {entry['lost_updates']} ({verdict})"
        )
    if ledger is not None:
        lines.append(
            f"ledger: the movements of the {ledger['items']} adjusted items "
            f"{'add up to their quantities' if ledger['agree'] else 'DO NOT add up to their quantities'}"
        )
    for when, found in oversell or []:
        lines.append(f"reservations {when}: {found.describe()}")
    for r in rows:
        if r.ran_out:
            lines.append(
                f"{r.workload} @{r.in_flight}: ran out of ACTIVE reservations; measured over {r.seconds:.1f} s"
            )
    cut = [f"{r.workload} @{r.in_flight} x{r.cut_at_end}" for r in rows if r.cut_at_end]
    if cut:
        lines.append(
            "cut when h2load ended the cell (reset by it, CANCELLED at the server; not errors): " + ", ".join(cut)
        )
    for in_flight in sorted({turn["in_flight"] for turn in auth_turns}):
        # A turn with failed calls has no honest speed: it is shown, not counted.
        turns = [turn for turn in auth_turns if turn["in_flight"] == in_flight]
        ratios = [turn["with"] / turn["without"] for turn in turns if turn["without"] and not turn["errors"]]
        shown = ", ".join(
            (f"{turn['with'] / turn['without']:.2f}" if turn["without"] else "n/a")
            + (f" ({turn['errors']} errors: not counted)" if turn["errors"] else "")
            for turn in turns
        )
        median = f"median {statistics.median(ratios):.2f}" if ratios else "no turn without errors"
        lines.append(
            f"auth interceptor @{in_flight}: GetItem with it / without it, in {len(turns)} turns: "
            f"{shown} ({median}; the table shows the median turn)"
        )
    errors = {f"{r.workload} @{r.in_flight}": r.errors_by_code for r in rows if r.errors_by_code}
    for cell, by_code in errors.items():
        lines.append(f"errors in {cell}: " + ", ".join(f"{k} x{v}" for k, v in by_code.items()))
    return lines
