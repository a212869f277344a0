"""Every call's way through a grpc.aio server, as one interceptor.

In order: the request id and deadline (CallContext), then metrics and the access log (which
see the status the client gets), the bearer token and the method's role, the caps on calls
in flight (per process, then per token subject), then the servicer. Whatever is raised on
the way becomes a status through servicekit.status; anything unexpected becomes a bare
INTERNAL and an ERROR log line.

One interceptor rather than one per concern: grpc.aio builds a new handler for every
interceptor on every call, while this wraps each method's handler once. A unary handler
runs only once its whole request has arrived, so nothing here is held by a client that
sends headers and never a message.

Over 300 lines on purpose: the stages read in the order a call meets them, in one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
import grpc.aio

from servicekit import errors
from servicekit.auth import PUBLIC_METHOD_PREFIXES, bearer_token, current_principal
from servicekit.call_context import REQUEST_ID_METADATA, CallContext, current_call, new_request_id
from servicekit.jwt import Principal, TokenVerifier
from servicekit.observability import ServerMetrics, log_call, rpc_type, split_method
from servicekit.status import error_domain, internal_status, to_rpc_status
from servicekit.unknown_method import UnknownMethodHandler

# grpc's types are generic in the stubs alone: strings keep them out of run time.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


log = logging.getLogger(__name__)

# The client's deadline runs out a moment before the server's copy of it (taken when the
# call arrived): a call cut with this little left was cut by its deadline, not cancelled.
DEADLINE_SLACK_S = 0.1
MAX_REQUEST_ID_LENGTH = 128


class _Malformed:
    """What a request that is not a valid message of its type deserializes to."""


MALFORMED = _Malformed()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises, so that bytes that are no valid message reach the
    pipeline (and answer INVALID_ARGUMENT) instead of failing inside grpc as INTERNAL."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 DecodeError, or whatever a parser raises on bytes from outside
            return MALFORMED

    return deserialize


class Authorizer:
    """Checks the bearer token and the role each method needs; fails closed: a method
    missing from `role_for_method` is denied to everybody."""

    def __init__(self, verifier: TokenVerifier, role_for_method: Mapping[str, str]) -> None:
        self._verifier = verifier
        self._role_for_method = role_for_method

    def authorize(self, method: str, metadata: Any) -> Principal:
        principal = self._verifier.verify(bearer_token(metadata))
        required = self._role_for_method.get(method)
        if required is None or required not in principal.roles:
            raise errors.PermissionDenied(
                f"this call needs the {required or 'unknown'} role", metadata={"required_role": required or ""}
            )
        return principal


@dataclass(frozen=True)
class CallLimits:
    """Caps on the unary calls a process serves at once; streams have caps of their own."""

    # Calls being served by this process at once, whoever makes them.
    max_calls_in_flight: int = 512
    # ...and by one token subject (its calls beyond that answer RESOURCE_EXHAUSTED).
    max_calls_per_subject: int = 64
    # Subjects with a cap of their own, e.g. a service that calls for all of its users.
    calls_per_subject_override: Mapping[str, int] = field(default_factory=dict)

    def cap_for(self, subject: str) -> int:
        return self.calls_per_subject_override.get(subject, self.max_calls_per_subject)


class _CallCounter:
    """Calls in flight in this process, in all and by subject."""

    def __init__(self, limits: CallLimits) -> None:
        self._limits = limits
        self._total = 0
        self._by_subject: defaultdict[str, int] = defaultdict(int)

    def acquire(self, subject: str) -> None:
        if self._total >= self._limits.max_calls_in_flight:
            raise errors.TooManyCalls("this server is at its limit of calls in flight: retry shortly")
        if self._by_subject[subject] >= self._limits.cap_for(subject):
            raise errors.TooManyCalls("too many calls in flight for this token's subject: retry shortly")
        self._total += 1
        self._by_subject[subject] += 1

    def release(self, subject: str) -> None:
        self._total -= 1
        left = self._by_subject[subject] - 1
        if left:
            self._by_subject[subject] = left
        else:
            del self._by_subject[subject]


class _Route:
    """What the pipeline knows of one method, looked up once."""

    def __init__(self, method: str, handler: Handler, metrics: ServerMetrics) -> None:
        self.method = method
        self.public = method.startswith(PUBLIC_METHOD_PREFIXES)
        self.labels = (rpc_type(handler.request_streaming, handler.response_streaming), *split_method(method))
        self.started = metrics.started.labels(*self.labels)
        self.in_flight = metrics.in_flight.labels(*self.labels)
        self.latency = metrics.latency.labels(*self.labels)
        self._handled = metrics.handled
        self._handled_by_code: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        series = self._handled_by_code.get(code)
        if series is None:
            series = self._handled_by_code[code] = self._handled.labels(*self.labels, code)
        return series


class CallPipeline(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics, authorizer: Authorizer | None, limits: CallLimits) -> None:
        """`authorizer=None` serves every method without a token (only scripts/bench uses it)."""
        self._metrics = metrics
        self._authorizer = authorizer
        self._calls = _CallCounter(limits)
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = self._handlers.get(details.method)
        if handler is None:
            inner = await continuation(details)
            if inner is None or isinstance(inner, UnknownMethodHandler):
                return inner  # UNIMPLEMENTED, before auth and uncounted (servicekit.unknown_method)
            handler = self._handlers.setdefault(
                details.method, self._wrap(_Route(details.method, inner, self._metrics), inner)
            )
        return handler

    def _wrap(self, route: _Route, inner: Handler) -> Handler:
        deserialize = _tolerant(inner.request_deserializer)
        serialize = inner.response_serializer
        if inner.unary_unary is not None:
            behaviour = inner.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                return await self._unary(route, behaviour, request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
        if inner.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(route, inner.unary_stream), deserialize, serialize
            )
        if inner.stream_unary is not None:
            behaviour = inner.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                return await self._unary(route, behaviour, _RequestStream(requests), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
        assert inner.stream_stream is not None  # a handler has one of the four kinds
        streaming = self._streaming(route, inner.stream_stream)

        async def stream_stream(requests: AsyncIterator[Any], context: Context) -> Any:
            async for response in streaming(_RequestStream(requests), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)

    def _begin(self, context: Context) -> CallContext:
        remaining = context.time_remaining()  # None when the caller set no deadline
        request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_METADATA:
                request_id = str(value)[:MAX_REQUEST_ID_LENGTH]
                break
        deadline = math.inf if remaining is None else time.monotonic() + remaining
        call = CallContext(deadline=deadline, request_id=request_id or new_request_id())
        current_call.set(call)  # each call is a task of its own: the value ends with it
        return call

    def _authorize(self, route: _Route, call: CallContext, context: Context) -> None:
        if route.public or self._authorizer is None:
            return
        principal = self._authorizer.authorize(route.method, context.invocation_metadata())
        call.subject = principal.subject
        current_principal.set(principal)

    async def _unary(
        self, route: _Route, behaviour: Callable[..., Awaitable[Any]], request: Any, context: Context
    ) -> Any:
        started = time.perf_counter()
        call = self._begin(context)
        route.started.inc()
        route.in_flight.inc()
        subject: str | None = None  # whose cap the call counts against, once admitted
        code, ended = "OK", False
        try:
            if request is MALFORMED:
                raise errors.MalformedRequest("the request is not a valid message of its type")
            self._authorize(route, call, context)
            if not route.public:
                self._calls.acquire(call.subject)
                subject = call.subject
            return await behaviour(request, context)
        except BaseException as error:
            code, status = self._outcome(route, error, context)
            if status is not None:
                # Counted before the abort sends the status: a client that sees it and then
                # scrapes the metrics finds its call there.
                self._end(route, call, subject, code, started)
                ended = True
                await _abort_with(context, status)
            raise
        finally:
            if not ended:
                self._end(route, call, subject, code, started)

    def _end(self, route: _Route, call: CallContext, subject: str | None, code: str, started: float) -> None:
        if subject is not None:
            self._calls.release(subject)
        route.in_flight.dec()
        self._finish(route, call, code, started)

    def _streaming(self, route: _Route, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        """A response stream: its own caps (e.g. watches per subject) are the servicer's."""
        writes_itself = not inspect.isasyncgenfunction(behaviour)  # uses context.write(), returns None

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            call = self._begin(context)
            route.started.inc()
            route.in_flight.inc()
            code, ended = "OK", False
            try:
                if request is MALFORMED:
                    raise errors.MalformedRequest("the request is not a valid message of its type")
                self._authorize(route, call, context)
                if writes_itself:
                    await behaviour(request, context)
                else:
                    async with contextlib.aclosing(behaviour(request, context)) as responses:
                        async for response in responses:
                            yield response
                if isinstance(request, _RequestStream) and request.ended:
                    # A client that cancels ends its request stream as one that is done sending
                    # does, and a servicer reading it to the end (reflection) then returns: the
                    # cancellation, already on its way, must reach this call before it counts as OK.
                    for _ in range(3):
                        await asyncio.sleep(0)
            except BaseException as error:
                code, status = self._outcome(route, error, context)
                if status is not None:
                    self._end(route, call, None, code, started)  # before the status is sent
                    ended = True
                    await _abort_with(context, status)
                raise
            finally:
                if not ended:
                    self._end(route, call, None, code, started)

        return stream

    @staticmethod
    def _outcome(route: _Route, error: BaseException, context: Context) -> tuple[str, grpc.Status | None]:
        """The code `error` ends the call with, and the status to abort with; none for an
        error that ends the call by itself (a cancellation, an abort the servicer made)."""
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            remaining = context.time_remaining()
            timed_out = remaining is not None and remaining <= DEADLINE_SLACK_S
            return ("DEADLINE_EXCEEDED" if timed_out else "CANCELLED"), None
        if isinstance(error, grpc.aio.AbortError):
            code = context.code()
            return (code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"), None
        if isinstance(error, errors.DomainError):
            status = to_rpc_status(error, error_domain(route.method))
        else:
            log.error("unexpected error in %s", route.method, exc_info=error)
            status = internal_status()
        return status.code.name, status

    def _finish(self, route: _Route, call: CallContext, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        route.handled(code).inc()
        route.latency.observe(elapsed)
        log_call(route.method, code, elapsed, call.subject)


async def _abort_with(context: Context, status: grpc.Status | None) -> None:
    """Ends the call with `status` (raises); nothing for a call that ended by itself (None)."""
    if status is not None:
        await context.abort(status.code, status.details, status.trailing_metadata)


class _RequestStream:
    """A request stream that raises MalformedRequest at the first message that is not valid,
    and knows whether it has ended."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self.ended = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._checked()

    async def _checked(self) -> AsyncIterator[Any]:
        async for request in self._requests:
            if request is MALFORMED:
                raise errors.MalformedRequest("a request message is not a valid message of its type")
            yield request
        self.ended = True
