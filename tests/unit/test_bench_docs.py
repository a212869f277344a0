"""scripts/bench --write-docs puts a run's table into docs/performance.md between two markers:
what it replaces and what it leaves alone, without running a benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# scripts/ is where bench.py and bench_support live (scripts/bench runs from there, it is no package).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench import DOCS_PERFORMANCE, TABLE_END, TABLE_START, with_bench_table

SUMMARY = [
    "date: 2026-12-03T10:00:00+00:00",
    "machine: 2 cores",
    "",
    "| workload | calls/s |\n|---|--:|\n| GetItem | 4,135 |",
    "",
    "resident memory per server process (MB, now / peak): inventory 98 / 99",
]
DOCUMENT = f"# Performance\n\nThe method.\n\n{TABLE_START}\nan old table\n{TABLE_END}\n\nReading the table.\n"


def test_the_text_between_the_markers_becomes_the_summary_with_its_table_as_printed():
    written = with_bench_table(DOCUMENT, SUMMARY)

    between = written[written.index(TABLE_START) + len(TABLE_START) : written.index(TABLE_END)]
    assert between == (
        "\n- date: 2026-12-03T10:00:00+00:00\n- machine: 2 cores\n\n"
        "| workload | calls/s |\n|---|--:|\n| GetItem | 4,135 |\n\n"
        "- resident memory per server process (MB, now / peak): inventory 98 / 99\n"
    )
    assert "an old table" not in written


def test_the_text_around_the_markers_and_the_markers_stay():
    written = with_bench_table(DOCUMENT, SUMMARY)

    assert written.startswith(f"# Performance\n\nThe method.\n\n{TABLE_START}\n")
    assert written.endswith(f"\n{TABLE_END}\n\nReading the table.\n")


def test_writing_the_same_run_twice_gives_the_same_document():
    once = with_bench_table(DOCUMENT, SUMMARY)

    assert with_bench_table(once, SUMMARY) == once


@pytest.mark.parametrize(
    "document", ["# no markers\n", f"{TABLE_START}\nonly a start\n", f"{TABLE_END}\nend first\n{TABLE_START}\n"]
)
def test_a_document_without_both_markers_in_order_is_refused(document):
    with pytest.raises(ValueError, match="bench:table"):
        with_bench_table(document, SUMMARY)


def test_docs_performance_has_the_markers_the_bench_writes_between():
    document = DOCS_PERFORMANCE.read_text()

    assert document.count(TABLE_START) == document.count(TABLE_END) == 1
    with_bench_table(document, SUMMARY)
