"""The item service's use cases as coroutines, for the grpc.aio servicer.

ItemService and its storage are synchronous (SQLAlchemy Core over psycopg2 or sqlite3): each
use case runs in a bounded thread pool, sized to the connection pool, so that a database call
never blocks the event loop and no call waits for a connection. What needs no database (a
cached item) is answered on the loop itself. docs/performance.md compares this with the
asyncio drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from inventory_svc.domain import Item, ItemFields, ItemQuery, Page
from inventory_svc.reservation_rules import Reservation, ReservationLine, ReservationQuery
from inventory_svc.service import ItemService
from inventory_svc.stock import StockChange, StockMovement
from inventory_svc.watches import WATCH_BATCH, LowStockWatch
from servicekit.call_context import current_call
from servicekit.errors import DeadlineExceeded

Result = TypeVar("Result")


def _unless_expired(function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Runs in the pool: a call whose caller gave up while it queued does no work."""
    call = current_call.get(None)
    if call is not None and call.time_remaining() <= 0:
        raise DeadlineExceeded("the deadline passed before the call could start")
    return function(*args, **kwargs)


@dataclass(frozen=True)
class DatabaseThreads:
    """The threads that run database work: the calls' and the watches' apart, so that the
    watchers one notice wakes all together never queue ahead of calls."""

    calls: Executor
    watches: Executor

    def __enter__(self) -> DatabaseThreads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for executor in (self.calls, self.watches):
            executor.shutdown(wait=True)


class AsyncItemService:
    def __init__(self, items: ItemService, threads: DatabaseThreads, *, watch_poll_s: float = 1.0) -> None:
        """`watch_poll_s`: a watcher re-reads the ledger at least this often, signalled or not.
        Build it on the event loop that serves the calls."""
        self._items = items
        self._threads = threads
        self._watch_poll_s = watch_poll_s
        self._loop = asyncio.get_running_loop()
        self._low_stock_news = asyncio.Event()
        items.watches.subscribe(self._announce_low_stock_from_any_thread)

    def _announce_low_stock_from_any_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._announce_low_stock)

    def _announce_low_stock(self) -> None:
        # Each wait holds the event of its own read: waking those and starting a new one
        # means a notice that arrives during a read is never missed.
        self._low_stock_news.set()
        self._low_stock_news = asyncio.Event()

    async def _run(self, function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        return await self._run_in(self._threads.calls, function, *args, **kwargs)

    async def _run_in(self, executor: Executor, function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
        # The pool's threads see this call's context (deadline, request id), as the loop does.
        work = functools.partial(contextvars.copy_context().run, _unless_expired, function, *args, **kwargs)
        return await self._loop.run_in_executor(executor, work)

    async def get_item(self, item_id: int) -> Item:
        cached = self._items.cached_item(item_id)
        if cached is not None:
            return cached
        return await self._run(self._items.get_item, item_id)

    async def create_item(self, fields: ItemFields, *, principal: str, request_id: str) -> Item:
        return await self._run(self._items.create_item, fields, principal=principal, request_id=request_id)

    async def batch_get_items(self, item_ids: Sequence[int]) -> list[Item]:
        return await self._run(self._items.batch_get_items, item_ids)

    async def list_items(self, query: ItemQuery, page_size: int, page_token: str) -> Page[Item]:
        return await self._run(self._items.list_items, query, page_size, page_token)

    async def list_customer_items(
        self, customer_id: str, include_inactive: bool, page_size: int, page_token: str
    ) -> Page[Item]:
        return await self._run(self._items.list_customer_items, customer_id, include_inactive, page_size, page_token)

    async def list_low_stock_items(self, threshold: int | None, page_size: int, page_token: str) -> Page[Item]:
        return await self._run(self._items.list_low_stock_items, threshold, page_size, page_token)

    async def list_stock_movements(self, item_id: int, page_size: int, page_token: str) -> Page[StockMovement]:
        return await self._run(self._items.list_stock_movements, item_id, page_size, page_token)

    async def update_item(self, item_id: int, changes: Mapping[str, Any], etag: str, *, principal: str) -> Item:
        return await self._run(self._items.update_item, item_id, changes, etag, principal=principal)

    async def delete_item(self, item_id: int, etag: str, *, principal: str) -> None:
        await self._run(self._items.delete_item, item_id, etag, principal=principal)

    async def adjust_quantity(self, change: StockChange, *, principal: str, request_id: str) -> Item:
        return await self._run(self._items.change_stock, change, principal=principal, request_id=request_id)

    async def batch_adjust_quantities(
        self, changes: Sequence[StockChange], *, principal: str, request_id: str
    ) -> list[Item]:
        return await self._run(self._items.batch_adjust_quantities, changes, principal=principal, request_id=request_id)

    async def reserve_stock(
        self,
        lines: Sequence[ReservationLine],
        ttl: timedelta | None,
        reference: str,
        *,
        principal: str,
        request_id: str,
    ) -> Reservation:
        return await self._run(
            self._items.reservations.reserve, lines, ttl, reference, principal=principal, request_id=request_id
        )

    async def confirm_reservation(self, reservation_id: int, *, principal: str, request_id: str) -> Reservation:
        return await self._run(
            self._items.reservations.confirm, reservation_id, principal=principal, request_id=request_id
        )

    async def release_reservation(self, reservation_id: int, *, principal: str, request_id: str) -> Reservation:
        return await self._run(
            self._items.reservations.release, reservation_id, principal=principal, request_id=request_id
        )

    async def extend_reservation(self, reservation_id: int, ttl: timedelta | None) -> Reservation:
        return await self._run(self._items.reservations.extend, reservation_id, ttl)

    async def get_reservation(self, reservation_id: int) -> Reservation:
        return await self._run(self._items.reservations.get, reservation_id)

    async def list_reservations(self, query: ReservationQuery, page_size: int, page_token: str) -> Page[Reservation]:
        return await self._run(self._items.reservations.list, query, page_size, page_token)

    async def _open_watch(
        self, customer_id: str, category: str, after_cursor: int | None, subject: str
    ) -> LowStockWatch:
        # The pool's thread cannot be stopped: if the caller goes away while it opens the watch,
        # the watch it opened is closed when it is done, or its slot would never come back.
        opening = asyncio.ensure_future(
            self._run_in(self._threads.watches, self._items.watches.open, customer_id, category, after_cursor, subject)
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(self._close_opened_watch)
            raise

    def _close_opened_watch(self, opening: asyncio.Future[LowStockWatch]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._items.watches.close(opening.result())

    async def watch_low_stock(
        self, customer_id: str, category: str, after_cursor: int | None, *, subject: str
    ) -> AsyncGenerator[StockMovement, None]:
        """Low-stock events from the ledger as they are committed, until the caller goes
        away (the stream is cancelled) or the server shuts down."""
        watch = await self._open_watch(customer_id, category, after_cursor, subject)
        try:
            while not self._items.watches.stopped:
                news = self._low_stock_news
                events = await self._run_in(self._threads.watches, self._items.watches.next_events, watch)
                for event in events:
                    yield event
                if len(events) < WATCH_BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(news.wait(), self._watch_poll_s)
        finally:
            self._items.watches.close(watch)
