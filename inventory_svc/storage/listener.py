"""The change listener: LISTEN/NOTIFY on PostgreSQL, so that what any replica commits reaches
this one's low-stock watchers and item cache."""

from __future__ import annotations

import logging
import select as select_module
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from inventory_svc.storage.tables import ALL_ITEMS, ITEM_CHANGES_CHANNEL, LOW_STOCK_CHANNEL, PROBE_CHANNEL
from servicekit.background import BackgroundThread

log = logging.getLogger(__name__)

# How long the listener waits before it listens again after losing its connection.
RECONNECT_PAUSE_S = 1.0


def _reason(error: BaseException) -> str:
    """The first line of what went wrong with the database, without the statement or a traceback."""
    cause = getattr(error, "orig", None) or error
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__


class ListenerSilent(ConnectionError):
    """The listener's own probe did not come back: its notifications cannot be trusted."""


class PostgresChangeListener(BackgroundThread):
    """LISTENs on PostgreSQL for what any replica commits: low-stock events (`on_low_stock`)
    and changed items (`on_item_changed(id)`, or `on_all_items_changed()` after a TRUNCATE).

    It proves every few seconds that notifications still reach it, by NOTIFYing a probe
    channel and waiting for the echo: a connection cut without a word (a dropped NAT entry,
    a partition) or a pooler that swallows LISTEN shows up as a missing echo. `on_listening`
    runs once the first echo is back, `on_lost` when the connection or the echo is lost;
    then it reconnects by itself."""

    def __init__(
        self,
        engine: Engine,
        *,
        on_low_stock: Callable[[], None],
        on_item_changed: Callable[[int], None],
        on_all_items_changed: Callable[[], None],
        on_listening: Callable[[], None],
        on_lost: Callable[[], None],
        probe_interval_s: float = 2.0,
        probe_deadline_s: float = 6.0,
    ) -> None:
        super().__init__("change-listener")
        self._engine = engine
        self._on_low_stock = on_low_stock
        self._on_item_changed = on_item_changed
        self._on_all_items_changed = on_all_items_changed
        self._on_listening = on_listening
        self._on_lost = on_lost
        self._probe_interval_s = probe_interval_s
        self._probe_deadline_s = probe_deadline_s
        self._outage_logged = False

    def run(self) -> None:
        database_errors = (DBAPIError, ListenerSilent, OSError, self._engine.dialect.loaded_dbapi.Error)
        while not self.stopping.is_set():
            try:
                self._listen()
            except database_errors as error:
                # An outage is one WARNING with its reason; the attempts that fail while it
                # lasts are DEBUG, and listening again is INFO.
                if self._outage_logged:
                    log.debug("change listener still cannot listen (%s): retrying", _reason(error))
                else:
                    self._outage_logged = True
                    log.warning("change listener lost its connection (%s): reconnecting", _reason(error))
            except Exception:
                log.exception("change listener failed: restarting it")
            self._on_low_stock()  # a watcher re-reads the ledger, so nothing missed meanwhile is lost
            self.stopping.wait(RECONNECT_PAUSE_S)

    def _listening_again(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            log.info("change listener listens again")
        self._on_listening()

    def _listen(self) -> None:
        connection = self._engine.raw_connection()
        dbapi_connection: Any = connection.driver_connection  # psycopg2's, which ships no types
        connection.detach()  # a connection of its own while it listens: the pool's are for calls
        listening = False
        try:
            dbapi_connection.autocommit = True
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"LISTEN {LOW_STOCK_CHANNEL}; LISTEN {ITEM_CHANGES_CHANNEL}; LISTEN {PROBE_CHANNEL}")
            last_echo = next_probe = time.monotonic()
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_probe:
                    with dbapi_connection.cursor() as cursor:
                        cursor.execute(f"NOTIFY {PROBE_CHANNEL}")
                    next_probe = now + self._probe_interval_s
                if now - last_echo > self._probe_deadline_s:
                    raise ListenerSilent(f"no echo of the listener's probe for {self._probe_deadline_s:g} s")
                if select_module.select([dbapi_connection], [], [], 0.5) != ([], [], []):
                    dbapi_connection.poll()
                notifications, dbapi_connection.notifies[:] = list(dbapi_connection.notifies), []
                for notification in notifications:
                    if notification.channel == PROBE_CHANNEL:
                        last_echo = time.monotonic()
                        if not listening:
                            listening = True
                            self._listening_again()
                    elif notification.channel == ITEM_CHANGES_CHANNEL:
                        if notification.payload == ALL_ITEMS:
                            self._on_all_items_changed()
                        else:
                            self._on_item_changed(int(notification.payload))
                if any(notification.channel == LOW_STOCK_CHANNEL for notification in notifications):
                    self._on_low_stock()
        finally:
            self._on_lost()
            # Detached, so closing is ours; not through connection.close(), whose rollback
            # would fail on a lost connection and be logged as an ERROR with a traceback.
            try:
                dbapi_connection.close()
            finally:
                connection.invalidate()
