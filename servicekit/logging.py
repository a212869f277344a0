"""Structured logs: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from servicekit.call_context import current_call

# Attributes every LogRecord has; anything else came in through `extra=` and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, when several processes share a port
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RequestIdFilter(logging.Filter):
    """Adds the request id of the call being served, so that one call's lines can be found
    across services."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = current_call.get(None)
        if call is not None:
            record.request_id = call.request_id
        return True


class SpanFilter(logging.Filter):
    """Adds the trace_id and span_id of the current span (hex, as trace backends show
    them), so that a log line leads to its trace."""

    def __init__(self, current_span_ids: Callable[[], tuple[str, str] | None]) -> None:
        super().__init__()
        self._current_span_ids = current_span_ids

    def filter(self, record: logging.LogRecord) -> bool:
        span_ids = self._current_span_ids()
        if span_ids is not None:
            record.trace_id, record.span_id = span_ids
        return True


@contextmanager
def filter_added(log_filter: logging.Filter) -> Iterator[None]:
    """Adds `log_filter` to the root logger's handlers while the block runs."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
