"""The driver comparison (scripts/bench_support/drivers.py) is only worth reading if every
option answered what it was asked: run it briefly on a throwaway PostgreSQL database and
check the answers of each option on each workload. Its timings are not checked."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import throwaway_postgres_database

# scripts/ is where bench_support lives (scripts/bench runs from there, it is no package).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_support import drivers

ITEMS = 500


@pytest.fixture(scope="module")
def comparison(postgres_url: str) -> Iterator[dict[tuple[str, str], drivers.Cell]]:
    """One short turn of every option on every workload: enough calls to check every answer."""
    with throwaway_postgres_database(postgres_url) as url:
        drivers.load(url, ITEMS)
        cells = asyncio.run(drivers.compare(url, duration=0.3, warmup=0.1, turns=1, custom_plans=True))
        yield {(cell.option, cell.workload): cell for cell in cells}


def _answered(cell: drivers.Cell) -> None:
    assert cell.calls > 0, f"{cell.option} made no {cell.workload} call"
    assert (cell.wrong, cell.errors) == (0, 0), cell.first_problem


@pytest.mark.parametrize("option", list(drivers.OPTIONS))
def test_get_item_answers_the_asked_id(comparison, option):
    _answered(comparison[option, "GetItem"])


@pytest.mark.parametrize("option", list(drivers.OPTIONS))
def test_list_page_answers_fifty_items_after_the_asked_id(comparison, option):
    _answered(comparison[option, "ListItems page"])


@pytest.mark.parametrize("option", list(drivers.OPTIONS))
def test_search_page_answers_its_matches_and_their_total(comparison, option):
    _answered(comparison[option, "search page + count"])


@pytest.mark.parametrize("option", list(drivers.OPTIONS))
def test_adjust_quantity_moves_the_stock_by_what_it_added_and_the_ledger_adds_up(comparison, option):
    cell = comparison[option, "AdjustQuantity +-1"]
    _answered(cell)
    assert cell.added, "no adjustment was made"
    assert cell.stock_moved_as_added, "the stock did not move by what the calls added"
    assert cell.ledger_adds_up, "the ledger does not add up to the quantities"


def test_the_table_has_a_row_per_option_and_workload(comparison):
    rows = list(drivers.table(list(comparison.values())).splitlines()[2:])
    assert len(rows) == len(drivers.OPTIONS) * len(drivers.WORKLOADS)
