"""How the typed clients make a call: the deadline (the serving call's remaining time,
capped), the request id forwarded, a write with a request_id tried again while a server goes
away, and statuses turned back into the errors of servicekit.errors at the boundary."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from servicekit import errors
from servicekit.call_context import REQUEST_ID_METADATA, current_call
from servicekit.status import STATUS_FOR_ERROR

log = logging.getLogger(__name__)
Reply = TypeVar("Reply")

_ERROR_FOR_STATUS = {code: error for error, code in STATUS_FOR_ERROR.items()}


def error_from_rpc(error: grpc.RpcError) -> errors.DomainError:
    """The servicekit error for a status, with the field of a BadRequest detail. A status
    outside the table (INTERNAL, UNKNOWN, ...) is the other service failing: Unavailable."""
    code = error.code()
    kind = _ERROR_FOR_STATUS.get(code)
    if kind is None:
        log.warning("call failed with %s: %s", code.name, error.details())
        return errors.Unavailable(f"a service this call needs failed ({code.name})")
    message = error.details() or code.name
    if kind is errors.InvalidField:
        status = rpc_status.from_call(error)
        for detail in status.details if status else ():
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request) and bad_request.field_violations:
                violation = bad_request.field_violations[0]
                return errors.InvalidField(violation.field, violation.description)
        return errors.InvalidField("", message)
    return kind(message)


def call_bounds(timeout: float | None) -> tuple[float | None, tuple[tuple[str, str], ...]]:
    """The deadline of a call made while serving one (the serving call's remaining time,
    capped at `timeout`, or `timeout` when there is no serving call), and the metadata
    that forwards its request id."""
    call = current_call.get(None)
    if call is None:
        return timeout, ()
    remaining = call.time_remaining()
    if remaining <= 0:
        raise errors.DeadlineExceeded("the caller's deadline has passed")
    timeout = remaining if timeout is None else min(timeout, remaining)
    return timeout, ((REQUEST_ID_METADATA, call.request_id),)


class RetriedWrite:
    """The attempts of a write that carries a request_id, which the server answers with the
    first result when it comes again: tried again, within the call's deadline, on UNAVAILABLE
    and on CANCELLED (what grpc core answers for calls a stopping server had received but not
    started, grpc/grpc#41785). The channel's service config cannot do it: it retries by
    method, and the same method without a request_id is not safe to repeat."""

    RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
    ATTEMPTS = 3
    FIRST_PAUSE_S = 0.05

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._made = 1

    def remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def pause_after(self, error: grpc.RpcError) -> float | None:
        """How long to wait before the next attempt; None: no other attempt."""
        pause = self.FIRST_PAUSE_S * 2.0 ** (self._made - 1)
        left = self.remaining()
        if error.code() not in self.RETRIED or self._made >= self.ATTEMPTS or (left is not None and left <= pause):
            return None
        self._made += 1
        return pause


class RpcCaller:
    """Makes calls with the deadline and request id of call_bounds, and errors translated
    at the boundary."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    def __call__(
        self, method: grpc.UnaryUnaryMultiCallable[Any, Reply], request: Any, *, retry_safe: bool = False
    ) -> Reply:
        """`retry_safe`: a write the server recognises when it comes again (a request_id),
        tried again on the statuses of a server going away (see RetriedWrite)."""
        timeout, metadata = call_bounds(self._timeout_s)
        attempts = RetriedWrite(timeout) if retry_safe else None
        while True:
            try:
                return method(request, timeout=attempts.remaining() if attempts else timeout, metadata=metadata)
            except grpc.RpcError as error:
                pause = attempts.pause_after(error) if attempts else None
                if pause is None:
                    raise error_from_rpc(error) from error
                time.sleep(pause)

    def stream(
        self, method: grpc.UnaryStreamMultiCallable[Any, Reply], request: Any, timeout_s: float | None
    ) -> Iterator[Reply]:
        """A server stream, open until `timeout_s` (or the serving call's deadline) if any,
        which then raises DeadlineExceeded; closing the iterator cancels the call."""
        timeout, metadata = call_bounds(timeout_s)
        call = method(request, timeout=timeout, metadata=metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()  # frees the server's stream at once when the reader stops early


class AsyncRpcCaller:
    """RpcCaller for grpc.aio stubs: the same deadline, request id and errors."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    async def __call__(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Any, Reply], request: Any, *, retry_safe: bool = False
    ) -> Reply:
        timeout, metadata = call_bounds(self._timeout_s)
        attempts = RetriedWrite(timeout) if retry_safe else None
        while True:
            try:
                return await method(request, timeout=attempts.remaining() if attempts else timeout, metadata=metadata)
            except grpc.RpcError as error:
                pause = attempts.pause_after(error) if attempts else None
                if pause is None:
                    raise error_from_rpc(error) from error
                await asyncio.sleep(pause)

    async def stream(
        self, method: grpc.aio.UnaryStreamMultiCallable[Any, Reply], request: Any, timeout_s: float | None
    ) -> AsyncIterator[Reply]:
        """As RpcCaller.stream; closing the async iterator (aclose) cancels the call."""
        timeout, metadata = call_bounds(timeout_s)
        call = method(request, timeout=timeout, metadata=metadata)
        try:
            async for reply in call:
                yield reply
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()
