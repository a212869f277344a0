"""The repositories on each database: stock bounds, optimistic versions, keyset pages with
their filters, the ledger's low-stock events and request_id records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, update

from inventory_svc.domain import ItemQuery
from inventory_svc.stock import LowStockChange, MovementReason, movement_between
from inventory_svc.storage import SqlUnitOfWork
from inventory_svc.storage.tables import request_ids
from servicekit.errors import AlreadyExists
from tests.integration.builders import new_fields

CEILING = 1_000


def test_add_to_quantity_that_would_go_negative_answers_none_and_changes_nothing(empty_database: Engine, add_item):
    item = add_item(quantity=2)

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.items.add_to_quantity(item.id, -3, CEILING) is None
        uow.commit()

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get(item.id) == item


def test_add_to_quantity_past_the_ceiling_answers_none_and_changes_nothing(empty_database: Engine, add_item):
    item = add_item(quantity=CEILING - 1)

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.items.add_to_quantity(item.id, 2, CEILING) is None
        assert uow.items.add_to_quantity(item.id, 1, CEILING) is not None  # exactly the ceiling is allowed
        uow.commit()


def test_add_to_quantity_moves_the_stock_and_the_version(empty_database: Engine, add_item):
    item = add_item(quantity=2)

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        after = uow.items.add_to_quantity(item.id, -2, CEILING)
        uow.commit()

    assert after is not None
    assert (after.quantity, after.version) == (0, item.version + 1)


def test_adding_a_taken_sku_is_already_exists_and_the_transaction_stays_usable(empty_database: Engine, add_item):
    taken = add_item()

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        with pytest.raises(AlreadyExists):
            uow.items.add(new_fields(sku=taken.sku))
        other = uow.items.add(new_fields())
        uow.commit()

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get_many([taken.id, other.id]) == {taken.id: taken, other.id: other}


def test_replace_and_delete_at_a_stale_version_change_nothing(empty_database: Engine, add_item):
    item = add_item()

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.items.replace_fields(item.id, item.version + 1, new_fields(sku=item.sku, name="renamed")) is None
        assert uow.items.delete(item.id, item.version + 1) is None
        uow.commit()

    with SqlUnitOfWork(empty_database) as uow:
        assert uow.items.get(item.id) == item


def test_keyset_pages_walk_every_match_once_in_id_order(empty_database: Engine, add_item):
    added = [add_item(category="tools" if n % 2 else "toys", quantity=n) for n in range(9)]
    tools = [item for item in added if item.category == "tools"]
    query = ItemQuery(category="tools", in_stock_only=True)

    walked, after_id = [], 0
    with SqlUnitOfWork(empty_database) as uow:
        while page := uow.items.list_page(query, after_id, 2):
            walked += page
            after_id = page[-1].id

    assert walked == tools
    assert [item.id for item in walked] == sorted(item.id for item in walked)


@pytest.mark.parametrize(
    "query",
    [ItemQuery(category="tools"), ItemQuery(text="drill")],
    ids=["an index walk, counted apart", "a substring search, counted in its scan"],
)
def test_the_first_page_counts_every_match(empty_database: Engine, add_item, query):
    matches = [add_item(category="tools", name=f"Drill {n}") for n in range(5)]
    add_item(category="toys", name="Kite")

    with SqlUnitOfWork(empty_database) as uow:
        page, total = uow.items.first_page(query, 2)

    assert (page, total) == (matches[:2], 5)


def test_low_stock_events_come_oldest_first_after_the_cursor(empty_database: Engine, add_item):
    item = add_item(quantity=5, low_stock_threshold=3)
    with SqlUnitOfWork(empty_database) as uow:
        cursor = uow.movements.latest_low_stock_event_id()

    for delta in (-1, -2, +4, -1):  # 4 (none), 2 (became low), 6 (recovered), 5 (none)
        with SqlUnitOfWork(empty_database, for_write=True) as uow:
            before = uow.items.get(item.id)
            after = uow.items.add_to_quantity(item.id, delta, CEILING)
            movement = movement_between(before, after, MovementReason.SALE)
            assert movement is not None
            uow.movements.add(movement)
            uow.commit()

    with SqlUnitOfWork(empty_database) as uow:
        events = uow.movements.low_stock_events(cursor, "alice", "storage", 10)
        others = uow.movements.low_stock_events(cursor, "bob", "", 10)
        newest_first = uow.movements.list_page(item.id, None, 10)

    assert [event.low_stock_change for event in events] == [LowStockChange.BECAME_LOW, LowStockChange.RECOVERED]
    assert others == []
    assert [movement.quantity_after for movement in newest_first] == [5, 6, 2, 4, 5]


def test_a_request_id_record_round_trips_its_first_result(empty_database: Engine, add_item):
    item = add_item()

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.request_ids.claim("a-request", "AdjustQuantity", "f1", ttl_s=60) is None
        uow.request_ids.complete("a-request", item)
        uow.commit()
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        stored = uow.request_ids.claim("a-request", "AdjustQuantity", "f2", ttl_s=60)

    assert stored is not None
    assert (stored.method, stored.fingerprint, stored.result) == ("AdjustQuantity", "f1", item)


def test_a_request_id_claimed_but_not_completed_stands_for_no_result_yet(empty_database: Engine):
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.request_ids.claim("in-progress", "CreateItem", "f", ttl_s=60) is None
        uow.commit()
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        stored = uow.request_ids.claim("in-progress", "CreateItem", "f", ttl_s=60)

    assert stored is not None and stored.result is None


def test_a_request_id_past_its_ttl_is_free_again_and_purged(empty_database: Engine):
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        for request_id in ("old", "older", "new"):
            assert uow.request_ids.claim(request_id, "CreateItem", "f", ttl_s=60) is None
        uow.commit()
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with empty_database.begin() as connection:
        connection.execute(
            update(request_ids).where(request_ids.c.request_id.in_(["old", "older"])).values(create_time=an_hour_ago)
        )

    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.request_ids.claim("old", "CreateItem", "other", ttl_s=60) is None  # expired: claimed anew
        assert uow.request_ids.purge_expired(ttl_s=60) == 1  # "older"; "new" and the new "old" stay
        uow.commit()
    with SqlUnitOfWork(empty_database, for_write=True) as uow:
        assert uow.request_ids.claim("new", "CreateItem", "f", ttl_s=60) is not None
        assert uow.request_ids.claim("older", "CreateItem", "f", ttl_s=60) is None
