"""Benchmark: the services under load from h2load, as one table (and JSON in var/bench/).

One run sets up its own data (`--items` over 100 customers, bulk-loaded into a schema made
by the real migrations), starts inventory and the CRM as processes the way scripts/run
does (console scripts, environment settings, auth on), and measures each workload at 1, 8
and 32 calls in flight: calls/s, p50, p99, errors, CPU per call; beside them, as the
ceiling, null gRPC servers that answer GetItem with a constant reply. At the end: each
server's resident memory, a check that AdjustQuantity lost no update, and on PostgreSQL
EXPLAIN ANALYZE of the list and search queries.

How the load is made (and its limits) is in scripts/bench_support/h2load.py and in the
notes printed under the table.

    scripts/bench                                  # 10,000 items, PostgreSQL when it answers on 127.0.0.1:5432
    scripts/bench --items 1000000 --reuse-data     # scale run; keeps the loaded data between runs
    scripts/bench --only 'GetItem|ListItems' --in-flight 8 --duration 10 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_support import data, drivers, h2load, profile, reservations
from bench_support.common import ROOT, VAR, say
from bench_support.explain import explain_queries
from bench_support.measure import measure_all
from bench_support.report import (
    DOCS_PERFORMANCE,
    NOTES,
    TABLE_END,
    TABLE_START,
    machine,
    read_earlier,
    summary_lines,
    with_bench_table,
)
from bench_support.servers import start_servers
from bench_support.services import background_busy_percent, service_env
from bench_support.workloads import BENCH_CUSTOMER, PAGE_SIZE, build_workloads, spot_check

from servicekit.jwt import AuthSettings, TokenIssuer

# tests/unit/test_bench_docs.py reads the docs' markers from here, where --write-docs uses them.
__all__ = ["DOCS_PERFORMANCE", "TABLE_END", "TABLE_START", "main", "with_bench_table"]

INVENTORY_ROLES = ["inventory.read", "inventory.write"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=data.DEFAULT_ITEMS, help="items to load (default 10,000)")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of an empty database to use (never dropped); "
        "default: a fresh PostgreSQL database inventory_bench (inventory_bench_N for "
        "other --items) on 127.0.0.1:5432, else SQLite under var/bench/",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help="keep the database when it already holds --items items (loading 1M takes minutes)",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="INVENTORY_PROCESSES and CRM_PROCESSES, as docs/configuration.md advises: the cores "
        "(default here: %(default)s)",
    )
    parser.add_argument(
        "--pin-cpus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="INVENTORY_PIN_CPUS and CRM_PIN_CPUS: each server process on one core (default: on; "
        "this machine is the benchmark's own)",
    )
    parser.add_argument("--in-flight", default="1,8,32", help="calls in flight, comma-separated (default 1,8,32)")
    parser.add_argument("--only", help="run only the workloads whose name matches this regular expression")
    parser.add_argument(
        "--search", default=data.DEFAULT_SEARCH, help=f"the text search (default {data.DEFAULT_SEARCH!r})"
    )
    parser.add_argument(
        "--deep-page",
        type=int,
        default=2000,
        help="the ListItems page compared with page 1 (default 2,000, or the last page there is)",
    )
    parser.add_argument(
        "--max-h2load",
        type=int,
        default=32,
        help="h2load processes per cell at most; the calls in flight are split over them (default 32)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of the servers during each cell at --profile-in-flight",
    )
    parser.add_argument("--profile-in-flight", type=int, default=8)
    parser.add_argument(
        "--explain", action="store_true", help="print EXPLAIN ANALYZE (always in var/bench/explain.txt)"
    )
    parser.add_argument(
        "--drivers",
        action="store_true",
        help="then compare database drivers from one asyncio process on the same data "
        "(scripts/bench_support/drivers.py, 3 turns of --duration) and print its table",
    )
    parser.add_argument("--json", type=Path, default=VAR / "latest.json")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help=f"then put this run's table into {DOCS_PERFORMANCE.relative_to(ROOT)}, between its bench:table markers",
    )
    parser.add_argument(
        "--compare", type=Path, help="a JSON of an earlier run (e.g. at 10,000 items): adds its calls/s and the ratio"
    )
    return parser.parse_args()


def prepare_database(args: argparse.Namespace, env: dict[str, str]) -> data.Database:
    database = data.choose_database(args.database_url, VAR, args.items)
    existing = data.item_count(database)
    if args.reuse_data and existing == args.items:
        say(f"reusing the {existing:,} items in {database.description}")
        data.migrate(database, env)
        return database
    if database.owned:
        data.recreate(database)
    elif existing:
        raise SystemExit(
            f"bench: {database.description} holds {existing:,} items: give an empty database, "
            f"or --reuse-data with --items {existing}"
        )
    data.migrate(database, env)
    say(f"loading {args.items:,} items into {database.description} ...")
    started = time.monotonic()
    data.load_items(database, args.items, progress=say)
    say(f"loaded in {time.monotonic() - started:.1f} s")
    return database


def main() -> None:
    args = parse_args()
    if not h2load.available():
        raise SystemExit(f"bench: {h2load.INSTALL_HINT}")
    in_flights = [int(n) for n in args.in_flight.split(",")]
    if args.write_docs:
        with_bench_table(DOCS_PERFORMANCE.read_text(), [])  # fails now, not after the run, without markers
    VAR.mkdir(parents=True, exist_ok=True)
    log_dir, workdir = VAR / "logs", VAR / "work"
    log_dir.mkdir(exist_ok=True)
    secret_file = VAR / "jwt-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    env = service_env(secret_file)
    env.setdefault("INVENTORY_PROCESSES", str(args.processes))
    env.setdefault("CRM_PROCESSES", str(args.processes))
    env.setdefault("INVENTORY_PIN_CPUS", str(args.pin_cpus).lower())
    env.setdefault("CRM_PIN_CPUS", str(args.pin_cpus).lower())
    issuer = TokenIssuer(AuthSettings(secret=secret_file.read_text().strip()))
    tokens = {
        "inventory": issuer.mint("bench", INVENTORY_ROLES, 6 * 3600),
        "other subject": issuer.mint("bench-other", INVENTORY_ROLES, 6 * 3600),
        "customer": issuer.mint(BENCH_CUSTOMER, ["customer"], 6 * 3600),
    }

    database = prepare_database(args, env)
    # What an earlier run left held (one stopped halfway) would expire under this one's load.
    if left := reservations.expire_left(database):
        say(f"expired the {left:,} reservations an earlier run left ACTIVE")
    fixtures = data.read_fixtures(database, pool=32, customer=BENCH_CUSTOMER)
    started_at = datetime.now(UTC)
    services, processes = start_servers(database, env, log_dir)
    background = [background_busy_percent()]
    auth_turns: list[dict[str, Any]] = []
    adjust_log: list[dict[str, Any]] = []
    profiles: list[tuple[str, Path]] = []
    checks: dict[str, str] = {}
    counters = data.PostgresCounters(database) if database.kind == "postgresql" else None
    oversell: list[tuple[str, reservations.Oversell]] = []
    try:
        workloads = build_workloads(args, fixtures, tokens, processes, database, in_flights)
        for workload in workloads:
            checks[workload.name] = spot_check(workload, processes[workload.server].address)

        rows = measure_all(
            args, workloads, in_flights, processes, database, workdir, adjust_log, profiles, counters, auth_turns
        )
        memory = {p.name: p.memory_mb() for p in processes.values()}
        background.append(background_busy_percent())
        ledger = None
        if adjust_log:
            touched = fixtures.adjust_item_ids
            sums, now = data.ledger_sums(database, touched), data.quantities(database, touched)
            ledger = {"items": len(touched), "agree": all(sums.get(i) == now[i] for i in touched)}
    finally:
        exit_codes = services.stop()
        if counters:
            counters.close()
    if any(workload.reserves for workload in workloads):
        say("checking the reservations and the ledger of every item ...")
        oversell.append(("after the last cell", reservations.check_oversell(database)))
        left = reservations.expire_left(database)
        oversell.append((f"after the {left:,} left ACTIVE were expired", reservations.check_oversell(database)))

    explain = (
        explain_queries(database, fixtures, workloads, args.search, PAGE_SIZE) if database.kind == "postgresql" else []
    )
    meta = {
        "date": started_at.isoformat(timespec="seconds"),
        "machine": machine(),
        "database": database.description,
        "items": args.items,
        "customers": data.CUSTOMERS,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "max_h2load": args.max_h2load,
        "search": args.search,
        "processes": {"inventory": env["INVENTORY_PROCESSES"], "crm": env["CRM_PROCESSES"]},
        "pin_cpus": {"inventory": env["INVENTORY_PIN_CPUS"], "crm": env["CRM_PIN_CPUS"]},
        "background_busy_percent": {"before": background[0], "after": background[1]},
    }
    summary = summary_lines(
        meta,
        rows,
        read_earlier(args.compare) if args.compare else None,
        memory,
        adjust_log,
        ledger,
        auth_turns,
        oversell,
    )
    lines = list(summary)
    lines += ["", "workloads:"] + [f"  {w.name}: {w.note}; checked: {checks.get(w.name, '')}" for w in workloads]
    lines += ["", "notes:"] + [f"  - {note}" for note in NOTES]
    if any(code not in (0, None) for code in exit_codes.values()) or None in exit_codes.values():
        lines.append(f"server exit codes after SIGTERM: {exit_codes}")
    print("\n".join(lines))

    explain_text = "\n\n".join(f"-- {e['query']}\n{e['sql']}\n{e['plan']}" for e in explain)
    if explain:
        (VAR / "explain.txt").write_text(explain_text + "\n")
        if args.explain or args.items >= 100_000:
            print("\nEXPLAIN (ANALYZE, BUFFERS) of the SQL the repository sends (caught from its own calls):\n")
            print(explain_text)
        else:
            print(f"\nEXPLAIN ANALYZE of the list and search queries: {VAR / 'explain.txt'} (--explain prints it)")
    summaries = []
    for title, path in profiles:
        profile_summary = profile.summarise(path)
        summaries.append({"title": title, "file": str(path), **asdict(profile_summary)})
        print(
            "\n"
            + profile.format_summary(title, profile_summary)
            + f"\n  (collapsed stacks: {path}; open in speedscope)"
        )

    if args.drivers and database.kind == "postgresql":
        say("comparing database drivers (scripts/bench_support/drivers.py) ...")
        print(
            "\n"
            + drivers.run(
                database.url, items=args.items, duration=args.duration, warmup=args.warmup, turns=3, progress=say
            )
        )
    elif args.drivers:
        print("\ndrivers: not compared, they need PostgreSQL")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "meta": meta,
                "results": [asdict(r) for r in rows],
                "memory_mb": memory,
                "adjust_quantity": adjust_log,
                "auth_interceptor_turns": auth_turns,
                "ledger": ledger,
                "explain": explain,
                "profiles": summaries,
                "notes": NOTES,
                "workloads": [{"name": w.name, "note": w.note, "checked": checks.get(w.name, "")} for w in workloads],
                "server_exit_codes": exit_codes,
                "reservations_checked": [{"when": when, **asdict(found)} for when, found in oversell],
            },
            indent=2,
        )
    )
    print(f"\nJSON: {args.json}")
    if args.write_docs:
        DOCS_PERFORMANCE.write_text(with_bench_table(DOCS_PERFORMANCE.read_text(), summary))
        print(f"table written to {DOCS_PERFORMANCE}")
    if not all(found.ok for _, found in oversell):
        raise SystemExit(
            "bench: the reservations check failed (above): oversold, or reserved units or the ledger wrong"
        )


if __name__ == "__main__":
    main()
