"""Low-stock watches: the signal that wakes them, and the bookkeeping of each open watch (its
slot per replica and per token subject, its filters, how far it has read the ledger)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from inventory_svc.domain import ItemQuery, TooManyWatches
from inventory_svc.ports import UnitOfWorkFactory
from inventory_svc.stock import StockMovement
from servicekit.errors import InvalidField, ShuttingDown

WATCH_BATCH = 100


class LowStockSignal:
    """Tells this process's low-stock watchers that the ledger may hold new events: called
    after a local commit and, on PostgreSQL, for every replica's commit (from any thread)."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[], None]] = []
        self.closed = False

    def subscribe(self, callback: Callable[[], None]) -> None:
        """`callback` runs on every notification, in the notifying thread."""
        self._subscribers.append(callback)

    def notify(self) -> None:
        for callback in self._subscribers:
            callback()

    def close(self) -> None:
        self.closed = True
        self.notify()


@dataclass
class LowStockWatch:
    """One open watch: its filters, how far it has read, and whose it is."""

    customer_id: str
    category: str
    cursor: int
    subject: str


class LowStockWatches:
    """This replica's open watches: each takes a slot, bounded per replica and per subject,
    and reads the ledger's low-stock events past its cursor."""

    def __init__(
        self,
        unit_of_work: UnitOfWorkFactory,
        signal: LowStockSignal,
        *,
        max_watchers: int,
        max_watches_per_subject: int,
    ) -> None:
        self._unit_of_work = unit_of_work
        self._signal = signal
        self._max_watchers = max_watchers
        self._max_watches_per_subject = max_watches_per_subject
        self._open: defaultdict[str, int] = defaultdict(int)  # open watches by subject
        self._lock = threading.Lock()

    def open(self, customer_id: str, category: str, after_cursor: int | None, subject: str = "") -> LowStockWatch:
        """Takes a slot for a watch from `after_cursor`, or from now; close() gives it back."""
        if after_cursor is not None and after_cursor < 0:
            raise InvalidField("after_cursor", "must be zero or more")
        ItemQuery(customer_id=customer_id, category=category).check()
        if self._signal.closed:
            raise ShuttingDown("this replica is shutting down: watch another")
        with self._lock:
            if sum(self._open.values()) >= self._max_watchers:
                raise TooManyWatches("too many low-stock watchers on this replica: try another or later")
            if self._open[subject] >= self._max_watches_per_subject:
                raise TooManyWatches(
                    f"this token's subject has {self._max_watches_per_subject} watches open already: close one first"
                )
            self._open[subject] += 1
        try:
            if after_cursor is None:
                with self._unit_of_work() as uow:
                    after_cursor = uow.movements.latest_low_stock_event_id()
        except BaseException:
            self._release(subject)
            raise
        return LowStockWatch(customer_id, category, after_cursor, subject)

    def next_events(self, watch: LowStockWatch) -> list[StockMovement]:
        """The watch's next events (up to WATCH_BATCH, oldest first), moving its cursor past them."""
        with self._unit_of_work() as uow:
            events = uow.movements.low_stock_events(watch.cursor, watch.customer_id, watch.category, WATCH_BATCH)
        if events:
            watch.cursor = events[-1].id
        return events

    def close(self, watch: LowStockWatch) -> None:
        self._release(watch.subject)

    def _release(self, subject: str) -> None:
        with self._lock:
            self._open[subject] -= 1
            if not self._open[subject]:
                del self._open[subject]

    @property
    def stopped(self) -> bool:
        return self._signal.closed

    def subscribe(self, callback: Callable[[], None]) -> None:
        """`callback` runs whenever the ledger may hold new low-stock events."""
        self._signal.subscribe(callback)

    def stop(self) -> None:
        """Server shutdown: every watch stream ends cleanly."""
        self._signal.close()

    def wake(self) -> None:
        """The ledger may hold new events: look now."""
        self._signal.notify()
