"""What a server knows about the call it is serving, for the calls it makes downstream:
the caller's deadline and a request id for the logs. Set by CallContextInterceptor,
read by the clients, so that no layer in between passes them along by hand."""

from __future__ import annotations

import inspect
import itertools
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import grpc
from grpc_interceptor.server import ServerInterceptor

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
Value = TypeVar("Value")


def call_with(variable: ContextVar[Value], value: Value, method: Callable[..., Any], *args: Any) -> Any:
    """Calls `method` with `variable` set to `value`. A server-streaming method returns a
    generator that runs later, while grpc sends the stream: it gets the value then too."""
    reset = variable.set(value)
    try:
        result = method(*args)
    finally:
        variable.reset(reset)
    if inspect.isgenerator(result):
        return _stream_with(variable, value, result)
    return result


def _stream_with(variable: ContextVar[Value], value: Value, stream: Iterator[Any]) -> Iterator[Any]:
    reset = variable.set(value)
    try:
        yield from stream
    finally:
        variable.reset(reset)


class CallContextInterceptor(ServerInterceptor):
    def intercept(
        self, method: Callable[..., Any], request_or_iterator: Any,
        context: grpc.ServicerContext, method_name: str,
    ) -> Any:
        remaining = context.time_remaining()  # grpc gives a huge value when the caller set no deadline
        request_id = next(
            (str(value) for key, value in context.invocation_metadata() or () if key == REQUEST_ID_METADATA),
            "",
        ) or new_request_id()
        call = CallContext(
            deadline=time.monotonic() + remaining,
            request_id=request_id[:128],
        )
        return call_with(current_call, call, method, request_or_iterator, context)
