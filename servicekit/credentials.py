"""A calling service's credentials: its own token (minted, or kept in a file by the
platform) and what puts `authorization: Bearer <token>` on every call: client interceptors
on plaintext channels, call credentials on TLS ones (servicekit.tls)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from servicekit import errors
from servicekit.jwt import TokenIssuer

log = logging.getLogger(__name__)


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


class _BearerTokenPlugin(grpc.AuthMetadataPlugin):
    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            metadata = (("authorization", f"Bearer {self._token()}"),)
        except CredentialsMissing as error:  # this call fails UNAVAILABLE, the channel lives on
            callback((), error)
            return
        callback(metadata, None)


def bearer_call_credentials(token: Callable[[], str]) -> grpc.CallCredentials:
    """The token as call credentials, which grpc sends on secure channels only."""
    return grpc.metadata_call_credentials(_BearerTokenPlugin(token), name="bearer")


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

    reason = "CREDENTIALS_MISSING"


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
