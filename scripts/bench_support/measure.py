"""One cell: a workload at a number of calls in flight, measured from h2load, the servers'
metrics and CPU, the machine and PostgreSQL; the AdjustQuantity stock check; the auth
interceptor's cells in turns."""

from __future__ import annotations

import argparse
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench_support import data, grpc_load, h2load, profile
from bench_support.common import VAR, fmt, say
from bench_support.services import (
    Process,
    handled_delta,
    machine_busy_ticks,
    postgres_cpu_seconds,
    scrape_handled,
)
from bench_support.workloads import AUTH_OFF, AUTH_ON, TARGET_IN_FLIGHT, Workload

AUTH_TURNS = 3


@dataclass
class Row:
    workload: str
    in_flight: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int | None  # None: the servers have no metrics to count them
    calls: int
    server_cpu_us_per_call: float | None
    db_cpu_us_per_call: float | None  # the PostgreSQL server's processes; None on SQLite (in the server)
    machine_busy_percent: float
    h2load_cpu_percent: float
    errors_by_code: dict[str, int] = field(default_factory=dict)
    # PostgreSQL: sessions opened (connections made) and transactions during the cell, warm-up included.
    db_sessions_opened: int | None = None
    db_transactions_per_call: float | None = None
    profiled: bool = False
    # Calls still in flight when h2load ended a timed cell: it resets them, and the servers
    # count them CANCELLED. Not errors of the service; left out of `errors`.
    cut_at_end: int = 0
    target_per_s: float | None = None  # the workload's target, on its row at TARGET_IN_FLIGHT
    load_client: str = "h2load"  # or "grpc.aio" (grpc_load.py)
    # A cell of bodies used once that ran out of them: measured over `seconds` only.
    ran_out: bool = False
    seconds: float = 0.0


def _errors(
    servers: list[Process],
    deltas: list[dict[tuple[str, str, str], int] | None],
    cut_at_end: int,
    only_method: str | None = None,
) -> tuple[int | None, dict[str, int], int, int]:
    """(non-OK calls of the first server, every server's non-OK calls by method and code, OK
    calls of the first server, calls cut at the end) from the servers' metrics; None when a
    server has none. The first server is the one called: a CRM call that failed in inventory
    fails at the CRM too. Up to `cut_at_end` CANCELLED calls per server are the ones h2load
    reset when the cell ended, not errors."""
    if any(delta is None for delta in deltas):
        return None, {}, 0, 0
    by_code: dict[str, int] = {}
    errors = ok = cut = 0
    for index, (process, delta) in enumerate(zip(servers, deltas, strict=True)):
        for (_service, method, code), count in (delta or {}).items():
            if only_method is not None and method != only_method:
                continue  # a competing load's calls, not the measured ones
            if code == "OK":
                ok += count if index == 0 else 0
                continue
            if code == "CANCELLED":
                reset = min(count, cut_at_end)
                cut += reset if index == 0 else 0
                count -= reset
                if not count:
                    continue
            by_code[f"{process.name} {method} {code}"] = by_code.get(f"{process.name} {method} {code}", 0) + count
            errors += count if index == 0 else 0
    return errors, by_code, ok, cut


def measure(
    args: argparse.Namespace,
    workload: Workload,
    in_flight: int,
    processes: dict[str, Process],
    database: data.Database,
    workdir: Path,
    adjust_log: list[dict[str, Any]],
    profiles: list[tuple[str, Path]],
    counters: data.PostgresCounters | None,
) -> Row:
    target = processes[workload.server]
    servers = [processes[name] for name in workload.servers]
    run = {"max_processes": args.max_h2load}
    if workload.deltas:
        # Warm up (uncounted), then an exact number of calls, each answered before h2load ends,
        # so that the stock after the run can be checked against the calls that succeeded.
        warm = h2load.run(target.address, workload.load, in_flight, workdir, duration_s=args.warmup, **run)
        h2load.settle()
        calls = max(int(warm.calls_per_s * args.duration), 20 * in_flight)
        touched = sorted(
            {workload.deltas[i % len(workload.load.bodies)][0] for i in range(min(in_flight, args.max_h2load))}
        )
        stock_before = data.quantities(database, touched)
    metrics_before = [scrape_handled(p.metrics_address) for p in servers]
    cpu_before = [p.cpu_seconds() for p in servers]
    db_before = postgres_cpu_seconds() if database.kind == "postgresql" else None
    counted_before = counters.read() if counters else None
    busy_before = machine_busy_ticks()
    started = time.monotonic()
    profiling = (
        args.profile
        and in_flight == args.profile_in_flight
        and not workload.server.startswith("null")
        and not workload.server.startswith("GetItem, auth")
    )
    spies = []
    if profiling:
        seconds = args.duration + (0 if workload.deltas else args.warmup)
        for process in servers:
            output = VAR / "profiles" / f"{_slug(workload.name)}-{in_flight}-{process.name}.txt"
            output.parent.mkdir(parents=True, exist_ok=True)
            spies.append((process.name, output, profile.start(process.pid, seconds, output)))
    client: grpc_load.ClientRun | None = None
    with workload.background(args.warmup + args.duration) if workload.background else contextlib.nullcontext():
        if workload.grpc_client:
            client = grpc_load.run(
                target.address,
                workload.load,
                in_flight,
                workdir,
                max_processes=args.max_h2load,
                duration_s=args.duration,
                warmup_s=args.warmup,
                each_body_once=workload.each_body_once,
            )
            result = client.result
            if workload.each_body_once:
                workload.load = replace(workload.load, bodies=workload.load.bodies[client.calls_sent :])
        elif workload.deltas:
            result = h2load.run(target.address, workload.load, in_flight, workdir, calls=calls, **run)
        else:
            result = h2load.run(
                target.address, workload.load, in_flight, workdir, duration_s=args.duration, warmup_s=args.warmup, **run
            )
    wall = time.monotonic() - started
    h2load.settle(1.1 if counters else 0.3)  # PostgreSQL publishes a busy backend's counts once a second
    busy_after = machine_busy_ticks()
    cpu_used = sum(p.cpu_seconds() for p in servers) - sum(cpu_before)
    db_after = postgres_cpu_seconds() if db_before is not None else None
    metrics_after = [scrape_handled(p.metrics_address) for p in servers]
    counted_after = counters.read() if counters else None
    for name, output, spy in spies:
        spy.communicate()
        if output.exists():
            profiles.append((f"{workload.name} @{in_flight}, {name}", output))
    deltas = [handled_delta(before, after) for before, after in zip(metrics_before, metrics_after, strict=True)]
    cut = 0
    errors: int | None
    by_code: dict[str, int]
    if not servers[0].metrics_address:  # the null servers count nothing: the client's failures are all we know
        errors, by_code, ok = (0 if client else result.failed), {}, result.calls
    else:
        # A cell of exactly counted calls (AdjustQuantity) waits for every answer, as the
        # gRPC client does at the end of a cell: nothing is cut.
        measured_method = workload.load.path.rsplit("/", 1)[1] if workload.background else None
        waited = bool(workload.deltas) or client is not None
        errors, by_code, ok, cut = _errors(servers, deltas, 0 if waited else in_flight, measured_method)
        if errors is not None and client is None:
            errors += result.failed
    if client is not None and errors is not None and result.failed > errors:
        # The client saw every non-OK status the server sent, and also calls the server never answered.
        by_code.update({f"as the grpc.aio client saw them: {code}": n for code, n in client.not_ok_by_code.items()})
        errors = result.failed
    # CPU per call: over the whole cell, of the calls it made. h2load keeps the servers busy
    # for all of it (its rate holds for the warm-up too); the gRPC client counts its calls,
    # and its cell's wall time includes the client's start, when the servers are idle.
    calls_in_cell = client.calls_sent if client else result.calls_per_s * wall
    busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1) * 100
    row = Row(
        workload.name,
        in_flight,
        result.calls_per_s,
        h2load.percentile(result.latencies_ms, 0.50),
        h2load.percentile(result.latencies_ms, 0.99),
        errors,
        result.calls,
        cpu_used / calls_in_cell * 1e6 if calls_in_cell else None,
        (db_after - db_before) / calls_in_cell * 1e6
        if db_before is not None and db_after is not None and calls_in_cell and not workload.server.startswith("null")
        else None,
        busy,
        result.cpu_seconds / wall * 100,
        by_code,
        profiled=profiling,
        cut_at_end=cut,
        target_per_s=workload.target_per_s if in_flight == TARGET_IN_FLIGHT else None,
        load_client="grpc.aio" if client else "h2load",
        ran_out=bool(client and client.ran_out),
        seconds=result.seconds,
    )
    if counted_before and counted_after and not workload.server.startswith("null"):
        row.db_sessions_opened = counted_after["sessions"] - counted_before["sessions"]
        all_calls = ok if servers[0].metrics_address and errors is not None else None
        if all_calls:  # the servers' own count: h2load does not log the warm-up's calls
            transactions = counted_after["transactions"] - counted_before["transactions"]
            row.db_transactions_per_call = transactions / (all_calls + (errors or 0))
    if workload.deltas:
        adjust_log.append(check_adjustments(workload, in_flight, result, stock_before, database, errors, ok))
    return row


def auth_in_turns(
    by_name: dict[str, Workload],
    in_flight: int,
    measured: Callable[[Workload, int], Row],
    auth_turns: list[dict[str, Any]],
) -> tuple[Row, Row]:
    """GetItem with and without the JWT interceptor, in AUTH_TURNS turns, which goes first
    alternating: the machine drifts between two cells more than the interceptor costs.
    Returns the rows of the turn with the median ratio, for the table."""
    turns = []
    for turn in range(AUTH_TURNS):
        order = (AUTH_ON, AUTH_OFF) if turn % 2 == 0 else (AUTH_OFF, AUTH_ON)
        cells = {name: measured(by_name[name], in_flight) for name in order}
        with_auth, without = cells[AUTH_ON], cells[AUTH_OFF]
        errors = (with_auth.errors or 0) + (without.errors or 0)
        auth_turns.append(
            {"in_flight": in_flight, "with": with_auth.calls_per_s, "without": without.calls_per_s, "errors": errors}
        )
        ratio = with_auth.calls_per_s / without.calls_per_s if without.calls_per_s else 0.0
        turns.append((ratio, with_auth, without))
    turns.sort(key=lambda turn: turn[0])
    _, with_auth, without = turns[len(turns) // 2]
    return with_auth, without


def check_adjustments(
    workload: Workload,
    in_flight: int,
    result: h2load.LoadResult,
    before: dict[int, int],
    database: data.Database,
    errors: int | None,
    ok: int,
) -> dict[str, Any]:
    expected = dict(before)
    for body_index, answered in result.answered_by_body:
        item_id, delta = workload.deltas[body_index]
        expected[item_id] += delta * answered
    after = data.quantities(database, list(before))
    lost = sum(abs(expected[i] - after[i]) for i in before)
    # Exact when every answered call was OK (no call errored, and the servers counted as many OK calls).
    exact = errors == 0 and ok == result.calls
    return {
        "in_flight": in_flight,
        "items": len(before),
        "calls": result.calls,
        "errors": errors,
        "server_ok": ok,
        "expected_total": sum(expected.values()),
        "actual_total": sum(after.values()),
        "lost_updates": lost,
        "exact": exact,
    }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def measure_all(
    args: argparse.Namespace,
    workloads: list[Workload],
    in_flights: list[int],
    processes: dict[str, Process],
    database: data.Database,
    workdir: Path,
    adjust_log: list[dict[str, Any]],
    profiles: list[tuple[str, Path]],
    counters: data.PostgresCounters | None,
    auth_turns: list[dict[str, Any]],
) -> list[Row]:
    """Each workload at each number of calls in flight (the auth pair in turns), in the
    workloads' order; each cell's figures are told as it ends."""
    rows: list[Row] = []

    def measured(workload: Workload, in_flight: int) -> Row:
        row = measure(args, workload, in_flight, processes, database, workdir, adjust_log, profiles, counters)
        say(
            f"  {row.workload} @{in_flight}: {row.calls_per_s:,.0f}/s, p50 {fmt(row.p50_ms)} ms, "
            f"p99 {fmt(row.p99_ms)} ms, errors {row.errors if row.errors is not None else 'n/a'}"
        )
        return row

    by_name = {workload.name: workload for workload in workloads}
    in_turns = AUTH_ON in by_name and AUTH_OFF in by_name
    for workload in workloads:
        if in_turns and workload.name == AUTH_OFF:
            continue  # measured in turns with AUTH_ON
        for in_flight in in_flights:
            if in_turns and workload.name == AUTH_ON:
                rows.extend(auth_in_turns(by_name, in_flight, measured, auth_turns))
            else:
                rows.append(measured(workload, in_flight))
    order = [workload.name for workload in workloads]
    rows.sort(key=lambda row: (order.index(row.workload), in_flights.index(row.in_flight)))
    return rows
