"""Which database access serves an asyncio server fastest: the options side by side, in one run.

One asyncio event loop in one process keeps `--in-flight` calls going (8: one task each)
for `--duration` seconds per workload, through each of these, in turns:

  asyncpg + SQLAlchemy     AsyncEngine over asyncpg (postgresql+asyncpg://)
  psycopg 3 + SQLAlchemy   AsyncEngine over psycopg 3 (postgresql+psycopg://, async)
  psycopg2 in threads      the service's sync Engine today (psycopg2), called through a
                           ThreadPoolExecutor of 8 with loop.run_in_executor
  asyncpg, no SQLAlchemy   asyncpg's own pool and the same SQL text, as a reference for
                           what SQLAlchemy costs

The workloads send the statements the repository sends (imported from
inventory_svc.storage) and read each row into an Item as the repository does: GetItem
by a random id, a 50-item ListItems page after a random id, the first 50-item page of a
text search with its count, and AdjustQuantity (+1 or -1: the update with RETURNING and its
ledger row, in one transaction). Reads run in autocommit, as the repository runs them on
PostgreSQL. Every answer is checked (the asked id, 50 ascending ids, the known total; after
AdjustQuantity, the stock moved by what the calls added and the ledger adds up to it).

Each pool holds at most 8 connections (pre-ping as the service's default, --no-pre-ping
to leave it out) and each engine is disposed after its turn. The options take turns, in a
rotated order each turn, so that drift of a shared machine shows across turns; the table
gives the median turn. CPU is the process's (time.process_time(), the driver's threads
included) per call.

About 800 lines, one file: a study that runs on its own (python drivers.py) and is read top
to bottom (the options, the data, the measuring, the table); what is compared and how it is
measured stay side by side so that a change to one is seen against the other.

    .venv/bin/python scripts/bench_support/drivers.py                  # 10,000 items, 3 turns of 5 s
    .venv/bin/python scripts/bench_support/drivers.py --turns 2 --duration 3 --only 'asyncpg'
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

if __package__ in (None, ""):
    # Run as a script: scripts/ holds bench_support, as for scripts/bench.py.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url

from bench_support import data
from bench_support.services import machine_busy_ticks
from inventory_svc import migrations
from inventory_svc.domain import MAX_QUANTITY_VALUE, Item
from inventory_svc.settings import InventorySettings
from inventory_svc.stock import MovementReason
from inventory_svc.storage.engine import build_engine
from inventory_svc.storage.queries import (
    ADD_MOVEMENT,
    ADD_TO_QUANTITY,
    GET_ITEM,
    contains_pattern,
    counted_first_page_statement,
    page_statement,
    quantity_change,
)
from inventory_svc.storage.rows import item_from_row
from inventory_svc.storage.tables import items, stock_movements

Answer = TypeVar("Answer")
POOL = 8  # connections per option at most; also the executor's threads
PAGE = 50
DATABASE = "inventory_drivers"  # not scripts/bench's database, which a bench run drops
WORKLOADS = ("GetItem", "ListItems page", "search page + count", "AdjustQuantity +-1")
LIST_PAGE = page_statement(())
SEARCH_PAGE = counted_first_page_statement(("text_pattern",))
# asyncpg and psycopg 3 prepare the statements they run often; after five runs PostgreSQL may
# keep a generic plan, one made without the parameters' values. For the text search that plan
# walks the whole id index and filters (15 ms at 10,000 items instead of 0.5 ms with the
# trigram indexes). This setting has every execution planned with its values (--custom-plans).
CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}
_MOVEMENT_COLUMNS = [column.name for column in stock_movements.c if column.name != "id"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _movement(item: Item, delta: int) -> dict[str, Any]:
    """The ledger row of an adjustment, as SqlStockMovementRepository.add writes it (no
    low-stock event: the adjusted items hold far more than their threshold)."""
    return data.ledger_row(
        item,
        _utcnow(),
        delta=delta,
        quantity_after=item.quantity,
        reason=MovementReason.CORRECTION.value,
        reserved_delta=0,
        reserved_after=item.reserved_quantity,
        reservation_id=None,
    )


def _adjustment(item_id: int, delta: int) -> dict[str, Any]:
    # The repository's own parameters (queries.quantity_change), which cap at_most within int32:
    # asyncpg and psycopg 3 bind it as the INTEGER it is compared with and fail past it.
    return quantity_change(item_id, delta, MAX_QUANTITY_VALUE)


class Option(Protocol):
    """One way of reaching the database from the event loop; each method is one call."""

    name: str

    async def get_item(self, item_id: int) -> Item | None: ...
    async def list_page(self, after_id: int) -> list[Item]: ...
    async def search_page(self, pattern: str) -> tuple[list[Item], int]: ...
    async def adjust(self, item_id: int, delta: int) -> Item | None: ...
    async def close(self) -> None: ...


def _page_and_total(rows: Sequence[Any]) -> tuple[list[Item], int]:
    return [item_from_row(row[:-1]) for row in rows], rows[0][-1] if rows else 0


class SqlAlchemyAsync:
    """An AsyncEngine: `postgresql+asyncpg` or `postgresql+psycopg` (its async flavour)."""

    def __init__(self, name: str, url: str, pre_ping: bool, custom_plans: bool, *, driver: str) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        self.name = name
        connect_args: dict[str, Any] = {}
        if custom_plans:
            connect_args = (
                {"server_settings": CUSTOM_PLANS}
                if driver == "asyncpg"
                else {"options": " ".join(f"-c {k}={v}" for k, v in CUSTOM_PLANS.items())}
            )
        self._engine = create_async_engine(
            make_url(url).set(drivername=f"postgresql+{driver}"),
            pool_size=POOL,
            max_overflow=0,
            pool_pre_ping=pre_ping,
            connect_args=connect_args,
        )

    async def _rows(self, statement: Any, parameters: dict[str, Any]) -> Sequence[Any]:
        async with self._engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return (await connection.execute(statement, parameters)).all()

    async def get_item(self, item_id: int) -> Item | None:
        rows = await self._rows(GET_ITEM, {"item_id": item_id})
        return item_from_row(rows[0]) if rows else None

    async def list_page(self, after_id: int) -> list[Item]:
        return [item_from_row(row) for row in await self._rows(LIST_PAGE, {"after_id": after_id, "limit": PAGE})]

    async def search_page(self, pattern: str) -> tuple[list[Item], int]:
        return _page_and_total(await self._rows(SEARCH_PAGE, {"text_pattern": pattern, "limit": PAGE}))

    async def adjust(self, item_id: int, delta: int) -> Item | None:
        async with self._engine.connect() as connection, connection.begin():
            row = (await connection.execute(ADD_TO_QUANTITY, _adjustment(item_id, delta))).first()
            if row is None:
                return None
            item = item_from_row(row)
            await connection.execute(ADD_MOVEMENT, _movement(item, delta))
        return item

    async def close(self) -> None:
        await self._engine.dispose()


class SyncInThreads:
    """The service's own Engine (build_engine: psycopg2, its keepalives and pre-ping), each
    call run whole in a thread of a bounded executor, off the event loop."""

    def __init__(self, name: str, url: str, pre_ping: bool, custom_plans: bool) -> None:
        # custom_plans changes nothing here: psycopg2 sends parameters as literals, never prepares.
        self.name = name
        self._engine = build_engine(InventorySettings(database_url=url, db_pool_size=POOL, db_pool_pre_ping=pre_ping))
        self._executor = ThreadPoolExecutor(POOL, thread_name_prefix="db")

    def _in_thread(self, function: Callable[..., Answer], *args: Any) -> Awaitable[Answer]:
        return asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args))

    def _rows(self, statement: Any, parameters: dict[str, Any]) -> Sequence[Any]:
        with self._engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            return connection.execute(statement, parameters).all()

    def _get_item(self, item_id: int) -> Item | None:
        rows = self._rows(GET_ITEM, {"item_id": item_id})
        return item_from_row(rows[0]) if rows else None

    def _list_page(self, after_id: int) -> list[Item]:
        return [item_from_row(row) for row in self._rows(LIST_PAGE, {"after_id": after_id, "limit": PAGE})]

    def _search_page(self, pattern: str) -> tuple[list[Item], int]:
        return _page_and_total(self._rows(SEARCH_PAGE, {"text_pattern": pattern, "limit": PAGE}))

    def _adjust(self, item_id: int, delta: int) -> Item | None:
        with self._engine.connect() as connection, connection.begin():
            row = connection.execute(ADD_TO_QUANTITY, _adjustment(item_id, delta)).first()
            if row is None:
                return None
            item = item_from_row(row)
            connection.execute(ADD_MOVEMENT, _movement(item, delta))
        return item

    async def get_item(self, item_id: int) -> Item | None:
        return await self._in_thread(self._get_item, item_id)

    async def list_page(self, after_id: int) -> list[Item]:
        return await self._in_thread(self._list_page, after_id)

    async def search_page(self, pattern: str) -> tuple[list[Item], int]:
        return await self._in_thread(self._search_page, pattern)

    async def adjust(self, item_id: int, delta: int) -> Item | None:
        return await self._in_thread(self._adjust, item_id, delta)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.dispose()


@dataclass(frozen=True)
class RawStatement:
    """A Core statement compiled once for asyncpg: its SQL text and its parameters in order."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]

    @classmethod
    def of(cls, statement: Any, column_keys: list[str] | None = None) -> RawStatement:
        dialect = asyncpg_dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's dialects are unannotated
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        return cls(compiled.string, tuple(compiled.positiontup or ()), dict(compiled.params))

    def arguments(self, parameters: dict[str, Any]) -> list[Any]:
        values = {**self.defaults, **parameters}
        return [values[name] for name in self.names]


def _raw_item(row: Any) -> Item:
    # asyncpg reads the zone-less UTC columns as naive datetimes; tag them as UtcDateTime does.
    *head, create_time, update_time, version, reserved = row
    return item_from_row((*head, create_time.replace(tzinfo=UTC), update_time.replace(tzinfo=UTC), version, reserved))


def _naive_utc(value: datetime) -> datetime:
    # What the UtcDateTime column type does before binding: the columns hold UTC without a zone.
    return value.astimezone(UTC).replace(tzinfo=None)


class RawAsyncpg:
    """asyncpg's own pool and the exact SQL text SQLAlchemy's asyncpg dialect sends. Round
    trips as in the SQLAlchemy options: a ping per checkout with pre-ping, nothing on return
    (asyncpg's default reset would add a round trip per call that SQLAlchemy does not make)."""

    def __init__(self, name: str, url: str, pre_ping: bool, custom_plans: bool) -> None:
        self.name = name
        self._server_settings = CUSTOM_PLANS if custom_plans else {}
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._pre_ping = pre_ping
        self._pool: Any = None
        self._get = RawStatement.of(GET_ITEM)
        self._page = RawStatement.of(LIST_PAGE)
        self._search = RawStatement.of(SEARCH_PAGE)
        self._update = RawStatement.of(ADD_TO_QUANTITY)
        self._insert = RawStatement.of(ADD_MOVEMENT, column_keys=_MOVEMENT_COLUMNS)

    async def _open_pool(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

        async def keep(_connection: Any) -> None:
            pass  # every call ends its own transaction

        return await asyncpg.create_pool(
            self._dsn, min_size=POOL, max_size=POOL, reset=keep, server_settings=self._server_settings
        )

    async def _connection(self) -> Any:
        if self._pool is None:  # the first calls come at once: they share one pool being made
            self._pool = asyncio.ensure_future(self._open_pool())
        return (await self._pool).acquire()

    async def _rows(self, statement: RawStatement, parameters: dict[str, Any]) -> list[Any]:
        async with await self._connection() as connection:
            if self._pre_ping:
                await connection.fetchrow(";")
            rows: list[Any] = await connection.fetch(statement.sql, *statement.arguments(parameters))
            return rows

    async def get_item(self, item_id: int) -> Item | None:
        rows = await self._rows(self._get, {"item_id": item_id})
        return _raw_item(rows[0]) if rows else None

    async def list_page(self, after_id: int) -> list[Item]:
        return [_raw_item(row) for row in await self._rows(self._page, {"after_id": after_id, "limit": PAGE})]

    async def search_page(self, pattern: str) -> tuple[list[Item], int]:
        rows = await self._rows(self._search, {"text_pattern": pattern, "limit": PAGE})
        return [_raw_item(tuple(row)[:-1]) for row in rows], rows[0][-1] if rows else 0

    async def adjust(self, item_id: int, delta: int) -> Item | None:
        parameters = _adjustment(item_id, delta)
        parameters["now"] = _naive_utc(parameters["now"])
        async with await self._connection() as connection:
            if self._pre_ping:
                await connection.fetchrow(";")
            async with connection.transaction():
                row = await connection.fetchrow(self._update.sql, *self._update.arguments(parameters))
                if row is None:
                    return None
                item = _raw_item(row)
                movement = _movement(item, delta)
                movement["create_time"] = _naive_utc(movement["create_time"])
                await connection.execute(self._insert.sql, *self._insert.arguments(movement))
        return item

    async def close(self) -> None:
        if self._pool is not None:
            await (await self._pool).close()


# Each option from (url, pre_ping, custom_plans).
OPTIONS: dict[str, Callable[[str, bool, bool], Option]] = {
    "asyncpg + SQLAlchemy": partial(SqlAlchemyAsync, "asyncpg + SQLAlchemy", driver="asyncpg"),
    "psycopg 3 + SQLAlchemy": partial(SqlAlchemyAsync, "psycopg 3 + SQLAlchemy", driver="psycopg"),
    "psycopg2 in 8 threads": partial(SyncInThreads, "psycopg2 in 8 threads"),
    "asyncpg, no SQLAlchemy": partial(RawAsyncpg, "asyncpg, no SQLAlchemy"),
}


# ---------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Inputs:
    """What the workloads ask for, and the answers known beforehand, read from the data."""

    item_ids: list[int]  # random active items, for GetItem
    max_after_id: int  # a ListItems page after any id up to this one holds PAGE items
    search_pattern: str
    search_total: int
    adjust_item_ids: list[int]  # well-stocked items, for AdjustQuantity


def _psycopg2_engine(url: str) -> Engine:
    return create_engine(make_url(url).set(drivername="postgresql+psycopg2"), pool_size=1, max_overflow=0)


def load(url: str, count: int) -> None:
    """Makes the schema with the real migrations and bulk-loads `count` items (as scripts/bench does)."""
    engine = _psycopg2_engine(url)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()
    data.load_items(data.Database(url, "postgresql", url, owned=False), count, progress=lambda _: None)


def read_inputs(url: str, search: str = data.DEFAULT_SEARCH) -> Inputs:
    fixtures = data.read_fixtures(
        data.Database(url, "postgresql", url, owned=False), pool=256, customer=data.customer_id(7)
    )
    engine = _psycopg2_engine(url)
    try:
        with engine.connect() as connection:
            last = connection.execute(select(items.c.id).order_by(items.c.id.desc()).offset(PAGE).limit(1)).scalar()
            pattern = contains_pattern(search)
            rows = connection.execute(SEARCH_PAGE, {"text_pattern": pattern, "limit": PAGE}).all()
    finally:
        engine.dispose()
    if last is None or not fixtures.adjust_item_ids:
        raise SystemExit(f"drivers: the database holds too few items (more than {PAGE} are needed)")
    return Inputs(
        item_ids=fixtures.item_ids,
        max_after_id=int(last) - 1,
        search_pattern=pattern,
        search_total=int(rows[0][-1]) if rows else 0,
        adjust_item_ids=fixtures.adjust_item_ids[:32],
    )


def _quantities_and_ledger(url: str, item_ids: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    database = data.Database(url, "postgresql", url, owned=False)
    return data.quantities(database, item_ids), data.ledger_sums(database, item_ids)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    """One option on one workload in one turn."""

    option: str
    workload: str
    turn: int
    calls: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    machine_busy_percent: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)
    wrong: int = 0  # answers that were not what was asked
    errors: int = 0  # calls that raised
    first_problem: str = ""
    # AdjustQuantity: what the calls added per item, and whether the stock and ledger show it.
    added: dict[int, int] = field(default_factory=dict, repr=False)
    stock_moved_as_added: bool | None = None
    ledger_adds_up: bool | None = None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6 if self.calls else float("nan")

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000

    def problem(self, message: str) -> None:
        self.wrong += 1
        self.first_problem = self.first_problem or message


def _one_call(option: Option, workload: str, inputs: Inputs, cell: Cell) -> Callable[[random.Random], Awaitable[None]]:
    """One call of `workload`, which checks its own answer into `cell`."""

    async def get_item(rng: random.Random) -> None:
        item_id = rng.choice(inputs.item_ids)
        item = await option.get_item(item_id)
        if item is None or item.id != item_id:
            cell.problem(f"GetItem {item_id} answered {item.id if item else None}")

    async def list_page(rng: random.Random) -> None:
        after_id = rng.randint(0, inputs.max_after_id)
        ids = [item.id for item in await option.list_page(after_id)]
        if len(ids) != PAGE or ids[0] <= after_id or ids != sorted(set(ids)):
            cell.problem(f"page after {after_id}: {len(ids)} items, ids {ids[:3]}...")

    async def search_page(rng: random.Random) -> None:
        found, total = await option.search_page(inputs.search_pattern)
        if total != inputs.search_total or len(found) != min(PAGE, total):
            cell.problem(f"search: {len(found)} items of {total}, not of {inputs.search_total}")

    async def adjust(rng: random.Random) -> None:
        item_id, delta = rng.choice(inputs.adjust_item_ids), rng.choice((1, -1))
        item = await option.adjust(item_id, delta)
        if item is None or item.id != item_id:
            cell.problem(f"AdjustQuantity {item_id} answered {item.id if item else None}")
        else:
            cell.added[item_id] = cell.added.get(item_id, 0) + delta

    return {
        "GetItem": get_item,
        "ListItems page": list_page,
        "search page + count": search_page,
        "AdjustQuantity +-1": adjust,
    }[workload]


async def _keep_calls_in_flight(
    call: Callable[[random.Random], Awaitable[None]],
    cell: Cell,
    in_flight: int,
    seconds: float,
    seed: int,
    record: bool,
) -> None:
    deadline = time.perf_counter() + seconds

    async def task(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(rng)
            except Exception as error:  # noqa: BLE001 counted and shown: a failing option must not stop the others
                cell.errors += 1
                cell.first_problem = cell.first_problem or f"{type(error).__name__}: {error}"
            if record:
                cell.latencies_s.append(time.perf_counter() - started)

    await asyncio.gather(*(task(number) for number in range(in_flight)))


async def _measure(
    option: Option,
    workload: str,
    inputs: Inputs,
    url: str,
    turn: int,
    *,
    duration: float,
    warmup: float,
    in_flight: int,
) -> Cell:
    cell = Cell(option.name, workload, turn)
    call = _one_call(option, workload, inputs, cell)
    is_adjust = workload.startswith("AdjustQuantity")
    if is_adjust:
        before, _ = _quantities_and_ledger(url, inputs.adjust_item_ids)
    # Warm-up: opens the pool's connections and fills the statement caches (its answers are checked too).
    await _keep_calls_in_flight(call, cell, in_flight, warmup, seed=turn * 2, record=False)
    calls_before = len(cell.latencies_s)
    busy_before, ticks_before = machine_busy_ticks()
    cpu_before, started = time.process_time(), time.perf_counter()
    await _keep_calls_in_flight(call, cell, in_flight, duration, seed=turn * 2 + 1, record=True)
    cell.seconds = time.perf_counter() - started
    cell.cpu_s = time.process_time() - cpu_before
    busy_after, ticks_after = machine_busy_ticks()
    cell.machine_busy_percent = (busy_after - busy_before) / max(ticks_after - ticks_before, 1) * 100
    cell.calls = len(cell.latencies_s) - calls_before
    if is_adjust:
        after, ledger = _quantities_and_ledger(url, inputs.adjust_item_ids)
        cell.stock_moved_as_added = all(after[i] == before[i] + cell.added.get(i, 0) for i in before)
        cell.ledger_adds_up = all(ledger.get(i) == after[i] for i in after)
    return cell


async def compare(
    url: str,
    *,
    duration: float = 5.0,
    warmup: float = 1.0,
    turns: int = 3,
    in_flight: int = POOL,
    options: Sequence[str] = tuple(OPTIONS),
    workloads: Sequence[str] = WORKLOADS,
    pre_ping: bool = True,
    custom_plans: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Cell]:
    """Every option on every workload, `turns` times, the options in a rotated order each turn."""
    inputs = read_inputs(url)
    cells: list[Cell] = []
    for turn in range(turns):
        shift = turn % len(options)
        for name in [*options[shift:], *options[:shift]]:
            option = OPTIONS[name](url, pre_ping, custom_plans)
            try:
                for workload in workloads:
                    cell = await _measure(
                        option, workload, inputs, url, turn, duration=duration, warmup=warmup, in_flight=in_flight
                    )
                    cells.append(cell)
                    progress(
                        f"  turn {turn + 1} {name} {workload}: {cell.calls_per_s:,.0f}/s, "
                        f"p50 {cell.percentile_ms(0.5):.2f} ms, {cell.cpu_us_per_call:,.0f} µs CPU/call"
                        + (
                            f", {cell.wrong} wrong, {cell.errors} errors: {cell.first_problem}"
                            if cell.wrong or cell.errors
                            else ""
                        )
                    )
            finally:
                await option.close()
    return cells


# ---------------------------------------------------------------------------- output


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(cells: list[Cell]) -> str:
    """Per workload and option: the median turn's figures, each turn's calls/s, and the ratio to the best."""
    header = [
        "workload",
        "option",
        "calls/s",
        "calls/s by turn",
        "p50 ms",
        "p99 ms",
        "CPU µs/call",
        "vs best",
        "machine busy %",
        "checks",
    ]
    body = []
    for workload in dict.fromkeys(cell.workload for cell in cells):
        by_option: dict[str, list[Cell]] = {}
        for cell in cells:
            if cell.workload == workload:
                by_option.setdefault(cell.option, []).append(cell)
        medians = {name: _median([c.calls_per_s for c in turn_cells]) for name, turn_cells in by_option.items()}
        best = max(medians.values())
        for name, turn_cells in sorted(by_option.items(), key=lambda item: -medians[item[0]]):
            bad = sum(c.wrong + c.errors for c in turn_cells)
            ledger = [c for c in turn_cells if c.ledger_adds_up is not None]
            checks = "ok" if not bad else f"{bad} wrong/errors"
            if ledger:
                checks += (
                    ", ledger ok"
                    if all(c.ledger_adds_up and c.stock_moved_as_added for c in ledger)
                    else ", LEDGER/STOCK WRONG"
                )
            body.append(
                [
                    workload,
                    name,
                    f"{medians[name]:,.0f}",
                    " / ".join(f"{c.calls_per_s:,.0f}" for c in turn_cells),
                    f"{_median([c.percentile_ms(0.5) for c in turn_cells]):.2f}",
                    f"{_median([c.percentile_ms(0.99) for c in turn_cells]):.2f}",
                    f"{_median([c.cpu_us_per_call for c in turn_cells]):,.0f}",
                    f"{medians[name] / best:.2f}" if best else "n/a",
                    " / ".join(f"{c.machine_busy_percent:.0f}" for c in turn_cells),
                    checks,
                ]
            )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    left = {0, 1, 9}

    def line(row: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) if i in left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


def describe_run(
    *, items: int, duration: float, warmup: float, turns: int, in_flight: int, pre_ping: bool, custom_plans: bool
) -> str:
    import sqlalchemy

    versions = []
    for module in ("asyncpg", "psycopg", "psycopg2"):
        try:
            versions.append(f"{module} {__import__(module).__version__.split()[0]}")
        except ImportError:
            versions.append(f"{module} missing")
    return (
        f"drivers: one asyncio process, {in_flight} calls in flight, {items:,} items, {turns} turns of "
        f"{duration:g} s per workload after {warmup:g} s of warm-up; pools of {POOL}, pre-ping "
        f"{'on' if pre_ping else 'off'}, plan_cache_mode "
        f"{CUSTOM_PLANS['plan_cache_mode'] if custom_plans else 'as the server has it'}; "
        f"SQLAlchemy {sqlalchemy.__version__}, {', '.join(versions)}; "
        "figures: the median turn; CPU: this process's, driver threads included"
    )


def run(
    url: str,
    *,
    items: int,
    duration: float,
    warmup: float,
    turns: int,
    in_flight: int = POOL,
    options: Sequence[str] = tuple(OPTIONS),
    workloads: Sequence[str] = WORKLOADS,
    pre_ping: bool = True,
    custom_plans: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> str:
    """The comparison on a loaded database, as text: a line on how it ran, then the table."""
    cells = asyncio.run(
        compare(
            url,
            duration=duration,
            warmup=warmup,
            turns=turns,
            in_flight=in_flight,
            options=options,
            workloads=workloads,
            pre_ping=pre_ping,
            custom_plans=custom_plans,
            progress=progress,
        )
    )
    return (
        describe_run(
            items=items,
            duration=duration,
            warmup=warmup,
            turns=turns,
            in_flight=in_flight,
            pre_ping=pre_ping,
            custom_plans=custom_plans,
        )
        + "\n\n"
        + table(cells)
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=data.DEFAULT_ITEMS, help="items to load (default 10,000)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per workload (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each (default 1)")
    parser.add_argument("--turns", type=int, default=3, help="turns of every option (default 3)")
    parser.add_argument("--in-flight", type=int, default=POOL, help=f"concurrent calls (default {POOL})")
    parser.add_argument("--only", help="only the options whose name matches this regular expression")
    parser.add_argument(
        "--workloads", help=f"only the workloads matching this regular expression (of: {', '.join(WORKLOADS)})"
    )
    parser.add_argument(
        "--pre-ping",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="test each connection at checkout, as the service does by default (default: on)",
    )
    parser.add_argument(
        "--custom-plans",
        action="store_true",
        help="plan_cache_mode=force_custom_plan on each connection of asyncpg and psycopg 3 "
        "(see CUSTOM_PLANS: their prepared text search gets a generic plan otherwise)",
    )
    parser.add_argument(
        "--reuse-data",
        action="store_true",
        help=f"keep the database when it holds --items items (else it is dropped and made anew: "
        f"{DATABASE}, or {DATABASE}_N for other --items, on {data.DEFAULT_POSTGRES_SERVER})",
    )
    args = parser.parse_args(argv)
    options = [name for name in OPTIONS if not args.only or re.search(args.only, name, re.IGNORECASE)]
    workloads = [name for name in WORKLOADS if not args.workloads or re.search(args.workloads, name, re.IGNORECASE)]
    if not options or not workloads:
        parser.error("--only or --workloads matches nothing")

    name = DATABASE if args.items == data.DEFAULT_ITEMS else f"{DATABASE}_{args.items}"
    database = data.Database(f"{data.DEFAULT_POSTGRES_SERVER}/{name}", "postgresql", f"PostgreSQL {name}", owned=True)
    if not (args.reuse_data and data.item_count(database) == args.items):
        data.recreate(database)
        _say(f"loading {args.items:,} items into {database.description} ...")
        load(database.url, args.items)
    print(
        run(
            database.url,
            items=args.items,
            duration=args.duration,
            warmup=args.warmup,
            turns=args.turns,
            in_flight=args.in_flight,
            options=options,
            workloads=workloads,
            pre_ping=args.pre_ping,
            custom_plans=args.custom_plans,
            progress=_say,
        )
    )


if __name__ == "__main__":
    main()
