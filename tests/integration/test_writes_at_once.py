"""PostgreSQL's one-statement writes leave what the ordinary path leaves: the same item, the
same ledger row, the same request_id record; and write nothing where they cannot."""

from __future__ import annotations

import dataclasses

from sqlalchemy import Engine

from inventory_svc.domain import Item
from inventory_svc.stock import LowStockChange, MovementReason, StockMovement, movement_between
from inventory_svc.storage import SqlUnitOfWork
from tests.integration.builders import new_fields
from tests.integration.conftest import on_postgresql_only

CEILING = 1_000


def _comparable(value: Item | StockMovement) -> dict[str, object]:
    """What two writes of different items should share: all but ids, skus and times."""
    ignored = {"id", "item_id", "sku", "create_time", "update_time"}
    return {key: item for key, item in dataclasses.asdict(value).items() if key not in ignored}


def _ledger(engine: Engine, item_id: int) -> list[StockMovement]:
    with SqlUnitOfWork(engine) as uow:
        return uow.movements.list_page(item_id, None, 10)


@on_postgresql_only
def test_an_item_added_at_once_matches_one_added_the_ordinary_way(postgres_database: Engine):
    with SqlUnitOfWork(postgres_database, for_write=True, at_once=True) as uow:
        assert uow.at_once is not None
        at_once = uow.at_once.add_item(
            new_fields(quantity=2), principal="p", request_id="", method="CreateItem", fingerprint=""
        )
        uow.commit()
    with SqlUnitOfWork(postgres_database, for_write=True) as uow:
        ordinary = uow.items.add(new_fields(quantity=2))
        movement = movement_between(None, ordinary, MovementReason.ITEM_CREATED, principal="p")
        assert movement is not None
        uow.movements.add(movement)
        uow.commit()

    assert at_once is not None
    assert _comparable(at_once) == _comparable(ordinary)
    assert [_comparable(m) for m in _ledger(postgres_database, at_once.id)] == [
        _comparable(m) for m in _ledger(postgres_database, ordinary.id)
    ]
    assert _ledger(postgres_database, at_once.id)[0].low_stock_change == LowStockChange.BECAME_LOW


@on_postgresql_only
def test_a_stock_change_at_once_matches_the_ordinary_one_and_its_request_id_replays(
    postgres_database: Engine, add_item
):
    first, second = add_item(quantity=5), add_item(quantity=5)
    announced: list[str] = []

    with SqlUnitOfWork(
        postgres_database, for_write=True, at_once=True, on_low_stock_events=lambda: announced.append("!")
    ) as uow:
        assert uow.at_once is not None
        at_once = uow.at_once.add_to_quantity(
            first.id, -3, CEILING, MovementReason.SALE, note="n", principal="p", request_id="r-1",
            method="AdjustQuantity", fingerprint="f",
        )  # fmt: skip
        uow.commit()
    with SqlUnitOfWork(postgres_database, for_write=True) as uow:
        ordinary = uow.items.add_to_quantity(second.id, -3, CEILING)
        movement = movement_between(second, ordinary, MovementReason.SALE, note="n", principal="p", request_id="r-1")
        assert movement is not None
        uow.movements.add(movement)
        uow.commit()
    with SqlUnitOfWork(postgres_database, for_write=True) as uow:
        stored = uow.request_ids.claim("r-1", "AdjustQuantity", "f", ttl_s=60)

    assert at_once is not None and ordinary is not None
    assert _comparable(at_once) == _comparable(ordinary)
    assert _comparable(_ledger(postgres_database, first.id)[0]) == _comparable(_ledger(postgres_database, second.id)[0])
    assert announced == ["!"]  # it crossed the threshold
    assert stored is not None and (stored.fingerprint, stored.result) == ("f", at_once)


@on_postgresql_only
def test_writes_at_once_that_cannot_write_answer_none_and_change_nothing(postgres_database: Engine, add_item):
    item = add_item(quantity=1)
    with SqlUnitOfWork(postgres_database, for_write=True) as uow:
        assert uow.request_ids.claim("used", "AdjustQuantity", "f", ttl_s=60) is None
        uow.commit()

    with SqlUnitOfWork(postgres_database, for_write=True, at_once=True) as uow:
        assert uow.at_once is not None
        write = dict(note="", principal="", method="AdjustQuantity", fingerprint="f")
        assert uow.at_once.add_to_quantity(item.id, -2, CEILING, MovementReason.SALE, request_id="", **write) is None
        assert uow.at_once.add_to_quantity(item.id, 1, CEILING, MovementReason.SALE, request_id="used", **write) is None
        assert (
            uow.at_once.add_to_quantity(item.id + 999, 1, CEILING, MovementReason.SALE, request_id="", **write) is None
        )
        taken = new_fields(sku=item.sku)
        assert uow.at_once.add_item(taken, principal="", request_id="", method="CreateItem", fingerprint="") is None

    with SqlUnitOfWork(postgres_database) as uow:
        assert uow.items.get(item.id) == item
    assert len(_ledger(postgres_database, item.id)) == 1  # its creation only


def test_a_unit_of_work_on_sqlite_has_no_writes_at_once(empty_database: Engine):
    with SqlUnitOfWork(empty_database, for_write=True, at_once=True) as uow:
        has_writes_at_once = uow.at_once is not None

    assert has_writes_at_once == (empty_database.dialect.name == "postgresql")
