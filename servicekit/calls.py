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
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicekit import errors
from servicekit.call_context import REQUEST_ID_METADATA, current_call
from servicekit.status import STATUS_FOR_ERROR

log = logging.getLogger(__name__)
Reply = TypeVar("Reply")

_ERROR_FOR_STATUS = {code: error for error, code in STATUS_FOR_ERROR.items()}


def error_from_rpc(error: grpc.RpcError) -> errors.DomainError:
    """The servicekit error for a status, its google.rpc details unpacked once: `reason`,
    `domain` and `metadata` (ErrorInfo), `field_violations` (BadRequest),
    `precondition_violations` (PreconditionFailure), `retry_after_s` (RetryInfo). A status
    outside the table (INTERNAL, UNKNOWN, ...) is the other service failing: Unavailable."""
    code = error.code()
    kind = _ERROR_FOR_STATUS.get(code)
    if kind is None:
        log.warning("call failed with %s: %s", code.name, error.details())
        return errors.Unavailable(f"a service this call needs failed ({code.name})")
    message = error.details() or code.name
    details = _Details(rpc_status.from_call(error))
    raised = errors.InvalidField.of(details.field_violations, message) if kind is errors.InvalidField else kind(message)
    if details.info is not None:
        raised.reason, raised.domain = details.info.reason, details.info.domain
        raised.metadata = dict(details.info.metadata)
    raised.field_violations = details.field_violations
    raised.precondition_violations = details.precondition_violations
    if details.retry_after_s is not None:
        raised.retry_after_s = details.retry_after_s
    return raised


class _Details:
    """The google.rpc details of a status that the typed clients read."""

    def __init__(self, status: status_pb2.Status | None) -> None:
        self.info: error_details_pb2.ErrorInfo | None = None
        self.field_violations: tuple[errors.FieldViolation, ...] = ()
        self.precondition_violations: tuple[errors.PreconditionViolation, ...] = ()
        self.retry_after_s: float | None = None
        for detail in status.details if status is not None else ():
            info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            failure, retry = error_details_pb2.PreconditionFailure(), error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                self.info = info
            elif detail.Unpack(bad_request):
                self.field_violations = tuple(
                    errors.FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
            elif detail.Unpack(failure):
                self.precondition_violations = tuple(
                    errors.PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
                )
            elif detail.Unpack(retry):
                self.retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9


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
