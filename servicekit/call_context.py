"""What a server knows about the call it is serving, for the calls it makes downstream:
the caller's deadline and a request id for the logs. Set by servicekit.pipeline,
read by the clients, so that no layer in between passes them along by hand."""

from __future__ import annotations

import itertools
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

REQUEST_ID_METADATA = "x-request-id"


@dataclass(slots=True)
class CallContext:
    # time.monotonic() by which the caller wants the answer (far ahead when it set no deadline).
    deadline: float
    request_id: str
    # The verified token subject, filled in by the auth interceptor, for the access log.
    subject: str = ""

    def time_remaining(self) -> float:
        return self.deadline - time.monotonic()


current_call: ContextVar[CallContext] = ContextVar("current_call")
# A random prefix per process and a counter: unique like a UUID, without a system call per call.
_process_prefix = uuid.uuid4().hex[:16]
_sequence = itertools.count(1)


def new_request_id() -> str:
    return f"{_process_prefix}{next(_sequence):016x}"
