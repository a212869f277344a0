"""Item rows are read by position: the repository reads every stored column of items."""

from inventory_svc.storage.tables import ITEM_COLUMNS, items


def test_items_are_read_from_every_stored_column_once():
    stored = [column.name for column in items.c if column.computed is None]

    assert sorted(ITEM_COLUMNS) == sorted(stored) and len(set(ITEM_COLUMNS)) == len(ITEM_COLUMNS)
