"""The item cache's rules, without a database: nothing is kept while it is off, and a
database read that may predate a change is never kept."""

from __future__ import annotations

import time

from inventory_svc.domain import Item, Money
from inventory_svc.item_cache import ItemCache


def item(item_id: int, quantity: int = 1) -> Item:
    return Item(id=item_id, sku=f"SKU-{item_id}", name="thing", price=Money("USD", 10**9), quantity=quantity)


def enabled_cache(capacity: int = 10) -> ItemCache:
    cache = ItemCache(capacity)
    cache.enable()
    return cache


def test_an_item_read_and_kept_is_found():
    cache = enabled_cache()
    cache.put(item(1), cache.generation(), time.monotonic())

    assert cache.get(1) == item(1)


def test_a_cache_that_is_off_keeps_nothing():
    cache = ItemCache(10)
    cache.put(item(1), cache.generation(), time.monotonic())

    assert cache.get(1) is None


def test_a_read_that_began_before_a_change_is_not_kept():
    cache = enabled_cache()
    began = cache.generation()
    cache.invalidate(2)  # any change meanwhile, even of another item: the read may be older than it

    cache.put(item(1), began, time.monotonic())

    assert cache.get(1) is None


def test_an_invalidated_item_is_read_again():
    cache = enabled_cache()
    cache.put(item(1, quantity=5), cache.generation(), time.monotonic())

    cache.invalidate(1)

    assert cache.get(1) is None


def test_losing_the_listener_empties_the_cache_and_keeps_it_off():
    cache = enabled_cache()
    cache.put(item(1), cache.generation(), time.monotonic())

    cache.disable()
    cache.put(item(2), cache.generation(), time.monotonic())

    assert cache.get(1) is None and cache.get(2) is None


def test_the_least_recently_used_item_leaves_first_when_full():
    cache = enabled_cache(capacity=2)
    for item_id in (1, 2):
        cache.put(item(item_id), cache.generation(), time.monotonic())
    cache.get(1)

    cache.put(item(3), cache.generation(), time.monotonic())

    assert [cache.get(item_id) is not None for item_id in (1, 2, 3)] == [True, False, True]


def test_an_entry_older_than_its_max_age_is_read_again():
    cache = ItemCache(10, max_age_s=5.0)
    cache.enable()
    cache.put(item(1), cache.generation(), read_at=time.monotonic() - 6.0)

    assert cache.get(1) is None


def test_a_truncate_empties_the_cache():
    cache = enabled_cache()
    for item_id in (1, 2):
        cache.put(item(item_id), cache.generation(), time.monotonic())

    cache.invalidate_all()

    assert cache.get(1) is None and cache.get(2) is None
