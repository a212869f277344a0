"""Work beside the server, each in a daemon thread of its own until the server stops it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from servicekit.errors import Unavailable

log = logging.getLogger(__name__)


class BackgroundThread:
    """A daemon thread running `run`, which returns once `stopping` is set; stop() sets it
    and waits a while for the thread to end."""

    def __init__(self, name: str) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    @property
    def name(self) -> str:
        return self._thread.name

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopping.set()
        self._thread.join(timeout=timeout_s)

    def run(self) -> None:
        raise NotImplementedError


class Periodic(BackgroundThread):
    """Runs `task` every `interval_s` seconds until stopped; a failure is logged, not fatal.

    An Unavailable (a database away) is logged once, at INFO, until the task works again:
    whoever lost the connection warns about the outage itself, and a task that runs every
    second would otherwise log it every second."""

    def __init__(self, name: str, interval_s: float, task: Callable[[], object]) -> None:
        super().__init__(name)
        self._interval_s = interval_s
        self._task = task

    def run(self) -> None:
        waiting = False
        while not self.stopping.wait(self._interval_s):
            try:
                self._task()
            except Unavailable as error:
                if not waiting:
                    log.info("periodic task %s waits: %s", self.name, error)
                waiting = True
                continue
            except Exception:
                log.exception("periodic task %s failed; it runs again in %.0f s", self.name, self._interval_s)
                continue
            if waiting:
                log.info("periodic task %s works again", self.name)
            waiting = False
