"""EXPLAIN (ANALYZE, BUFFERS) of the SQL that ListItems runs, on PostgreSQL.

The SQL is not written by hand: the repository is called once as the service calls it for
the benchmark's request (first_page for page 1, list_page for a later page), with the query
the servicer builds, and each statement it sends is caught on its way to the driver, then
explained with the same parameters.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from bench_support.data import Database, Fixtures, connect
from bench_support.workloads import Workload
from inventory.v1 import inventory_pb2 as pb
from inventory_svc.convert import query_from_request
from inventory_svc.storage.repositories import SqlItemRepository
from servicekit.page_tokens import decode_page_token, query_fingerprint


def explain_list_items(database: Database, request: pb.ListItemsRequest, limit: int) -> list[tuple[str, str]]:
    """(statement, plan) for each statement one ListItems call with `request` sends."""
    query = query_from_request(request)
    position = decode_page_token(request.page_token, query_fingerprint("items", query)) if request.page_token else None
    engine = connect(database)
    caught: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        caught.append((statement, parameters))

    try:
        with engine.connect() as connection:
            event.listen(engine, "before_cursor_execute", catch)
            repository = SqlItemRepository(connection)
            # The service asks for one more than a page.
            if position is None:
                repository.first_page(query, limit + 1)
            else:
                repository.list_page(query, position.after_id, limit + 1)
            event.remove(engine, "before_cursor_execute", catch)
            plans = []
            for statement, parameters in caught:
                rows = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
                shown = statement % {k: repr(v) for k, v in parameters.items()} if parameters else statement
                plans.append((" ".join(shown.split()), "\n".join(row[0] for row in rows)))
            return plans
    finally:
        engine.dispose()


def explain_queries(
    database: Database, fixtures: Fixtures, workloads: list[Workload], search: str, page_size: int
) -> list[dict[str, str]]:
    """EXPLAIN ANALYZE of the run's list and search queries: page 1 of a category, the search,
    and the deep page when the run measured it."""
    categories = sorted(fixtures.category_sizes)
    requests = {
        "ListItems category page 1": pb.ListItemsRequest(category=categories[0], page_size=page_size),
        f"ListItems search {search!r}": pb.ListItemsRequest(query=search, page_size=page_size),
    }
    deep = next((w for w in workloads if "page" in w.name and w.load.bodies), None)
    if deep is not None:
        requests[deep.name] = pb.ListItemsRequest.FromString(deep.load.bodies[0][5:])
    explain: list[dict[str, str]] = []
    for name, request in requests.items():
        for statement, plan in explain_list_items(database, request, page_size):
            explain.append({"query": name, "sql": statement, "plan": plan})
    return explain
