"""The answer to a method this server does not serve: UNIMPLEMENTED, naming what it does serve,
so that a call sent to the wrong service's port says so instead of "Method not found!".

finish_server registers it last, after every service; the call pipeline passes it through
untouched, before auth (no token is needed to learn what a port serves, which reflection
tells anyone anyway) and without metrics (a scanner's made-up names would each become series).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

# grpc's handler class is generic in its stubs alone.
if TYPE_CHECKING:
    _MethodHandler = grpc.RpcMethodHandler[Any, Any]
else:
    _MethodHandler = grpc.RpcMethodHandler


def unknown_method_message(method: str, served: Iterable[str]) -> str:
    """What a call of `method` (/package.Service/Method) hears from a server serving `served`."""
    service, _, name = method.strip("/").rpartition("/")
    names = tuple(served)
    if service in names:
        return f"{service} has no method {name} on this server (is the client's contract newer?)"
    return f"this server serves {', '.join(names)} (and health, reflection); {service or method} is not here"


@dataclass(frozen=True)
class UnknownMethodHandler(_MethodHandler):
    """A stream-stream handler: it answers at once, whatever the call's kind, without waiting
    for a request message that a streaming client may never send."""

    stream_stream: Callable[..., Any]
    request_streaming: bool = True
    response_streaming: bool = True
    request_deserializer: None = None
    response_serializer: None = None
    unary_unary: None = None
    unary_stream: None = None
    stream_unary: None = None


class UnknownMethods(grpc.GenericRpcHandler):
    """Answers every method it is asked for: register it after every real service."""

    def __init__(self, served: Iterable[str]) -> None:
        self._served = tuple(served)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> UnknownMethodHandler:
        message = unknown_method_message(handler_call_details.method, self._served)

        # An async generator, as a stream-stream handler is: the tracing interceptor iterates it.
        async def answer(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield  # type: ignore[unreachable]  # makes this an async generator; abort raises first

        return UnknownMethodHandler(answer)
