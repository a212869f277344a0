"""The server's side of authentication: every RPC but health checking and reflection needs
`authorization: Bearer <JWT>` (verified by servicekit.jwt). The verified principal reaches
servicers through the `current_principal` ContextVar (set by servicekit.pipeline), never
re-parsed from metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from servicekit.errors import TokenMissing
from servicekit.jwt import Principal

PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

current_principal: ContextVar[Principal] = ContextVar("current_principal")


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise TokenMissing("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise TokenMissing("missing authorization metadata: 'Bearer <token>'")
