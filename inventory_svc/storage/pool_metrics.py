"""The database connection pool's use, as Prometheus gauges."""

from __future__ import annotations

import threading

from prometheus_client import Gauge
from sqlalchemy import event
from sqlalchemy.pool import Pool

from servicekit.observability import ServerMetrics


def watch_pool(metrics: ServerMetrics, pool: Pool, size: int) -> None:
    """The database connection pool's use, as gauges that each worker process sets from what
    its pool holds (livesum adds up the live processes).

    The pool's events are not balanced through an outage (a checkout whose connect fails
    still checks in; a connection detached for the change listener leaves the pool), so
    counting them up and down drifts: the gauges are sizes of sets of the pool's own
    connection records instead, which cannot go negative or count one connection twice."""
    Gauge(
        "db_pool_size",
        "Database connections the pool keeps open when idle.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    ).set(size)
    in_use_gauge = Gauge(
        "db_pool_connections_in_use",
        "Database connections lent out to calls now.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    )
    open_gauge = Gauge(
        "db_pool_connections_open",
        "Database connections of the pool open now, in use or idle.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    )
    lock = threading.Lock()
    in_use: set[int] = set()  # ids of connection records lent out
    opened: set[int] = set()  # ids of connection records that hold an open connection

    def update(record: object, *, lent: bool | None = None, connected: bool | None = None) -> None:
        with lock:
            for members, member in ((in_use, lent), (opened, connected)):
                if member is not None:
                    (members.add if member else members.discard)(id(record))
            in_use_gauge.set(len(in_use))
            open_gauge.set(len(opened))

    event.listen(pool, "checkout", lambda _c, record, _p: update(record, lent=True))
    event.listen(pool, "checkin", lambda _c, record: update(record, lent=False))
    event.listen(pool, "connect", lambda _c, record: update(record, connected=True))
    event.listen(pool, "close", lambda _c, record: update(record, connected=False))
    # A detached connection (the change listener's own) leaves the pool; its record stays, empty.
    event.listen(pool, "detach", lambda _c, record: update(record, lent=False, connected=False))
