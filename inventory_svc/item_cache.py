"""Items recently read, so that GetItem can answer without the database.

It is only as good as its invalidation: every change of an item, made by any replica or by
hand, must reach `invalidate`. On PostgreSQL a trigger NOTIFYs every change and each
replica's listener passes it on; the listener turns the cache on once it LISTENs and off
(emptied) whenever its connection drops, since a notification may have been missed. With
no listener (SQLite, or in-process test servers) it stays off.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from inventory_svc.domain import Item


class ItemCache:
    def __init__(
        self,
        capacity: int,
        *,
        max_age_s: float = 5.0,
        on_hit: Callable[[], object] = lambda: None,
        on_miss: Callable[[], object] = lambda: None,
    ) -> None:
        """`max_age_s` bounds how long an entry is served even if an invalidation were lost
        unnoticed. `on_hit` and `on_miss` count the lookups made while the cache is on."""
        self._capacity = capacity
        self._max_age_s = max_age_s
        self._on_hit = on_hit
        self._on_miss = on_miss
        self._items: OrderedDict[int, tuple[Item, float]] = OrderedDict()  # item, when it was read
        self._lock = threading.Lock()
        # Bumped by every invalidation: a read that saw another value of it may be stale.
        self._generation = 0
        self._enabled = False

    def get(self, item_id: int) -> Item | None:
        if not self._enabled:
            return None
        item = None
        with self._lock:
            entry = self._items.get(item_id)
            if entry is not None:
                if time.monotonic() - entry[1] <= self._max_age_s:
                    item = entry[0]
                    self._items.move_to_end(item_id)
                else:
                    del self._items[item_id]
        (self._on_miss if item is None else self._on_hit)()
        return item

    def generation(self) -> int:
        """Take it before reading the database; hand it to put() with what was read."""
        return self._generation

    def put(self, item: Item, generation: int, read_at: float) -> None:
        """Keeps `item`, read from the database at `read_at` (time.monotonic()), unless
        something was invalidated since `generation` was taken: the read may predate it."""
        with self._lock:
            if not self._enabled or generation != self._generation:
                return
            self._items[item.id] = (item, read_at)
            self._items.move_to_end(item.id)
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def invalidate(self, item_id: int) -> None:
        with self._lock:
            self._generation += 1
            self._items.pop(item_id, None)

    def invalidate_all(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()

    def enable(self) -> None:
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._enabled = self._capacity > 0

    def disable(self) -> None:
        with self._lock:
            self._enabled = False
            self._generation += 1
            self._items.clear()
