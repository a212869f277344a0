"""Items recently read, so that GetItem can answer without the database.

It is only as good as its invalidation: every change of an item, made by any replica or by
hand, must reach `invalidate`. On PostgreSQL a trigger NOTIFYs every change and each
replica's listener passes it on; the listener turns the cache on once it LISTENs and off
(emptied) whenever its connection drops, since a notification may have been missed. With
no listener (SQLite, or in-process test servers) it stays off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

from inventory_svc.domain import Item


class ItemCache:
    def __init__(self, capacity: int, *, on_hit: Callable[[], object] = lambda: None,
                 on_miss: Callable[[], object] = lambda: None) -> None:
        """`on_hit` and `on_miss` count the lookups made while the cache is on."""
        self._capacity = capacity
        self._on_hit = on_hit
        self._on_miss = on_miss
        self._items: OrderedDict[int, Item] = OrderedDict()
        self._lock = threading.Lock()
        # Bumped by every invalidation: a read that saw another value of it may be stale.
        self._generation = 0
        self._enabled = False

    def get(self, item_id: int) -> Item | None:
        if not self._enabled:
            return None
        with self._lock:
            item = self._items.get(item_id)
            if item is not None:
                self._items.move_to_end(item_id)
        (self._on_miss if item is None else self._on_hit)()
        return item

    def generation(self) -> int:
        """Take it before reading the database; hand it to put() with what was read."""
        return self._generation

    def put(self, item: Item, generation: int) -> None:
        """Keeps `item` unless something was invalidated since `generation` was taken: the
        database read may then predate that change."""
        with self._lock:
            if not self._enabled or generation != self._generation:
                return
            self._items[item.id] = item
            self._items.move_to_end(item.id)
            if len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def invalidate(self, item_id: int) -> None:
        with self._lock:
            self._generation += 1
            self._items.pop(item_id, None)

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
