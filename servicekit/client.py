"""Client-side plumbing the typed clients share, synchronous and asyncio (grpc.aio) alike:
the bearer token on every call, service tokens that renew themselves, a deadline on every
call, and statuses turned back into the errors of servicekit.errors at the boundary."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import namedtuple
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from servicekit import errors
from servicekit.call_context import REQUEST_ID_METADATA, current_call
from servicekit.contract import retried_methods
from servicekit.jwt import TokenIssuer
from servicekit.status import STATUS_FOR_ERROR

log = logging.getLogger(__name__)
Reply = TypeVar("Reply")
Element = TypeVar("Element")

_ERROR_FOR_STATUS = {code: error for error, code in STATUS_FOR_ERROR.items()}

CHANNEL_OPTIONS = (
    # Fast recovery: a channel whose server went away tries again within two seconds, not minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # A full page (500 items of 4,000-character descriptions) can pass gRPC's default 4 MiB.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


def service_config(service: str, idempotent_methods: Iterable[str]) -> str:
    """gRPC service config: round-robin over every address the target resolves to, and
    retries with backoff on UNAVAILABLE for the idempotent methods only. CANCELLED too: a
    call this client cancels is never retried, so a CANCELLED one is the server's, which
    grpc core sends for calls it had received but not started when a server stops
    (grpc/grpc#41785): a rolling restart then shows the caller nothing."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": service, "method": method} for method in idempotent_methods],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                    },
                }
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class Page(Generic[Element]):
    """One page of a listing: the reply's own repeated field (no copy), the token of the
    next page ("" on the last one) and, where the listing counts them, the matches in all."""

    items: Sequence[Element]
    next_page_token: str
    total_size: int = 0

    @classmethod
    def of(cls, reply: Any) -> Page[Any]:
        """The page of a List reply with `items`, `next_page_token` and `total_size`."""
        return cls(reply.items, reply.next_page_token, reply.total_size)


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


def bearer_metadata(token: Callable[[], str]) -> tuple[str, str]:
    return ("authorization", f"Bearer {token()}")


class BearerTokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Appends `authorization: Bearer <token>` to each call's metadata, keeping what is there.

    `token` is called per call, so that a renewed token is picked up at once.
    """

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), bearer_metadata(self._token)]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(details), request)


class _AsyncBearerToken:
    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), bearer_metadata(self._token))
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _AsyncUnaryBearerToken(_AsyncBearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _AsyncStreamBearerToken(_AsyncBearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


def async_bearer_token_interceptors(token: Callable[[], str]) -> list[grpc.aio.ClientInterceptor]:
    """BearerTokenInterceptor for grpc.aio channels, which take one kind of call per
    interceptor object: one for unary calls, one for server streams."""
    return [_AsyncUnaryBearerToken(token), _AsyncStreamBearerToken(token)]


class MintedServiceToken:
    """A service's own token, minted with its signing key and renewed when a fifth of its
    lifetime is left."""

    def __init__(
        self,
        issuer: TokenIssuer,
        subject: str,
        roles: Iterable[str],
        lifetime_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._subject = subject
        self._roles = tuple(roles)
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._token = ""
        self._renew_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> str:
        if self._clock() >= self._renew_at:
            with self._lock:
                if self._clock() >= self._renew_at:
                    self._token = self._issuer.mint(self._subject, self._roles, self._lifetime_s)
                    self._renew_at = self._clock() + self._lifetime_s * 0.8
        return self._token


class CredentialsMissing(errors.Unavailable):
    """This service cannot present its own credentials (e.g. its token file is gone)."""


class TokenFile:
    """A token kept in a file by the platform (a mounted secret), read again when it changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: tuple[tuple[int, int], str] = ((-1, -1), "")

    def __call__(self) -> str:
        try:
            stat = os.stat(self._path)
            version = (stat.st_mtime_ns, stat.st_size)
            if version != self._seen[0]:
                with open(self._path) as token_file:
                    self._seen = (version, token_file.read().strip())
        except OSError as error:
            log.error("service token file %s cannot be read: %s", self._path, error.strerror)
            raise CredentialsMissing("this service's credentials are missing") from None
        return self._seen[1]


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
        pause = self.FIRST_PAUSE_S * 2 ** (self._made - 1)
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

    def __call__(self, method: Callable[..., Reply], request: Any, *, retry_safe: bool = False) -> Reply:
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

    def stream(self, method: Callable[..., Iterable[Reply]], request: Any, timeout_s: float | None) -> Iterator[Reply]:
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
        self, method: Callable[..., Awaitable[Reply]], request: Any, *, retry_safe: bool = False
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

    async def stream(self, method: Callable[..., Any], request: Any, timeout_s: float | None) -> AsyncIterator[Any]:
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


Client = TypeVar("Client", bound="ServiceClient")
AsyncClient = TypeVar("AsyncClient", bound="AsyncServiceClient")


class _ClientBase:
    """What a typed client says of its service (the stub class and the service's descriptor,
    whose reads the channel retries), and what it holds: the channel, the stub, the caller."""

    stub_class: Callable[[Any], Any]
    service: ServiceDescriptor
    _caller_class: Callable[[float], Any]

    def __init__(self, channel: Any, *, timeout_s: float = 5.0) -> None:
        self._channel = channel
        self._stub = self.stub_class(channel)
        self._call = self._caller_class(timeout_s)
        self._stream = self._call.stream

    @classmethod
    def channel_options(cls) -> list[tuple[str, Any]]:
        config = service_config(cls.service.full_name, retried_methods(cls.service))
        return [*CHANNEL_OPTIONS, ("grpc.service_config", config)]


class ServiceClient(_ClientBase):
    """Base of the typed clients: one long-lived grpc.Channel, the stub, the caller.

    A subclass names its stub class and its service's descriptor."""

    _caller_class = RpcCaller

    @classmethod
    def connect(
        cls: type[Client],
        target: str,
        token: Callable[[], str],
        *,
        timeout_s: float = 5.0,
        instrument: Callable[[grpc.Channel], grpc.Channel] | None = None,
    ) -> Client:
        """A channel to `target` (host:port, or dns:///name:port to spread calls over every
        address of a headless service), with the token on every call; `instrument` wraps the
        channel with metrics or tracing."""
        channel = grpc.insecure_channel(target, options=cls.channel_options())
        if instrument is not None:
            channel = instrument(channel)
        return cls(grpc.intercept_channel(channel, BearerTokenInterceptor(token)), timeout_s=timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: Client) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncServiceClient(_ClientBase):
    """ServiceClient over a grpc.aio channel: the same contract, coroutines for calls."""

    _caller_class = AsyncRpcCaller

    @classmethod
    def connect(
        cls: type[AsyncClient],
        target: str,
        token: Callable[[], str],
        *,
        timeout_s: float = 5.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> AsyncClient:
        """As ServiceClient.connect, on a grpc.aio channel; `interceptors` (grpc.aio client
        interceptors, e.g. OpenTelemetry's aio_client_interceptors()) add metrics or
        tracing, and see the token."""
        channel = grpc.aio.insecure_channel(
            target,
            options=cls.channel_options(),
            interceptors=[*async_bearer_token_interceptors(token), *interceptors],
        )
        return cls(channel, timeout_s=timeout_s)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self: AsyncClient) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
