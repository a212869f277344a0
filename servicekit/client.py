"""The base of the typed clients, synchronous and asyncio (grpc.aio) alike: a long-lived
channel whose service config balances over every address and retries the contract's reads,
the generated stub, and a caller that bounds and translates every call (servicekit.calls).
Their credentials come from servicekit.credentials, over TLS from servicekit.tls."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor

from servicekit.calls import AsyncRpcCaller, RpcCaller
from servicekit.contract import retried_methods
from servicekit.credentials import BearerTokenInterceptor, async_bearer_token_interceptors
from servicekit.tls import ClientTls, secure_channel_credentials

Element = TypeVar("Element")
Stub = TypeVar("Stub")

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


Client = TypeVar("Client", bound="ServiceClient[Any]")
AsyncClient = TypeVar("AsyncClient", bound="AsyncServiceClient[Any]")


class _ClientBase(Generic[Stub]):
    """What a typed client says of its service (the generated stub class and the service's
    descriptor, whose reads the channel retries), and what it holds: the channel, the stub
    (typed as `Stub`, the generated stub class or its asyncio variant)."""

    stub_class: ClassVar[type[Any]]
    service: ClassVar[ServiceDescriptor]

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._stub: Stub = self.stub_class(channel)

    @classmethod
    def channel_options(cls) -> list[tuple[str, Any]]:
        config = service_config(cls.service.full_name, retried_methods(cls.service))
        return [*CHANNEL_OPTIONS, ("grpc.service_config", config)]


class ServiceClient(_ClientBase[Stub]):
    """Base of the typed clients: one long-lived grpc.Channel, the stub, the caller.

    A subclass names its stub class and its service's descriptor, and is a
    ServiceClient[its generated stub class]."""

    def __init__(self, channel: grpc.Channel, *, timeout_s: float = 5.0) -> None:
        super().__init__(channel)
        self._call = RpcCaller(timeout_s)
        self._stream = self._call.stream

    @classmethod
    def connect(
        cls: type[Client],
        target: str,
        token: Callable[[], str],
        *,
        timeout_s: float = 5.0,
        instrument: Callable[[grpc.Channel], grpc.Channel] | None = None,
        tls: ClientTls | None = None,
    ) -> Client:
        """A channel to `target` (host:port, or dns:///name:port to spread calls over every
        address of a headless service), with the token on every call; `instrument` wraps the
        channel with metrics or tracing. With `tls` (a CA file at least) the channel is TLS
        (mTLS with a client certificate) and the token goes as call credentials."""
        if tls is not None and tls.enabled:
            options = [*cls.channel_options(), *tls.channel_options()]
            channel = grpc.secure_channel(target, secure_channel_credentials(tls, token), options=options)
            return cls(instrument(channel) if instrument else channel, timeout_s=timeout_s)
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


class AsyncServiceClient(_ClientBase[Stub]):
    """ServiceClient over a grpc.aio channel: the same contract, coroutines for calls; a
    subclass is an AsyncServiceClient[the generated asyncio stub class]."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 5.0) -> None:
        super().__init__(channel)
        self._call = AsyncRpcCaller(timeout_s)
        self._stream = self._call.stream

    @classmethod
    def connect(
        cls: type[AsyncClient],
        target: str,
        token: Callable[[], str],
        *,
        timeout_s: float = 5.0,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        tls: ClientTls | None = None,
    ) -> AsyncClient:
        """As ServiceClient.connect, on a grpc.aio channel; `interceptors` (grpc.aio client
        interceptors, e.g. OpenTelemetry's aio_client_interceptors()) add metrics or
        tracing, and see the token on plaintext channels (on TLS ones it is added after
        them, as call credentials)."""
        if tls is not None and tls.enabled:
            secure = grpc.aio.secure_channel(
                target,
                secure_channel_credentials(tls, token),
                options=[*cls.channel_options(), *tls.channel_options()],
                interceptors=interceptors,
            )
            return cls(secure, timeout_s=timeout_s)
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
