"""Item rows are read by position: the repository's column order must be the table's."""

from inventory_svc.repository import ITEM_COLUMNS, items


def test_item_rows_are_unpacked_in_the_tables_column_order():
    assert ITEM_COLUMNS == tuple(column.name for column in items.c)
