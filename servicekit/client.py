"""Client-side plumbing both services' clients share: the bearer token on every call."""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Callable

import grpc


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class BearerTokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Appends `authorization: Bearer <token>` to each call's metadata, keeping what is there.

    `token` is called per call, so that a refreshed token is picked up at once.
    """

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token()}")]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)
