"""request_id: the one spelling of a key, the fingerprint of the request it guards, and the
replay of a request sent again under the same key."""

from __future__ import annotations

import uuid
from typing import TypeVar

from inventory_svc.domain import RequestIdReused
from inventory_svc.ports import UnitOfWork
from servicekit.errors import InvalidField, RequestInProgress
from servicekit.page_tokens import query_fingerprint


def request_fingerprint(method: str, *request: object) -> str:
    """What a request_id is stored with, to tell a replay from another request under it."""
    return query_fingerprint(method, *request).hex()


def canonical_request_id(request_id: str) -> str:
    """The one spelling of a UUID that is stored, so that `{...}`, upper case or no hyphens
    name the same request as the usual form."""
    if not request_id:
        return ""
    try:
        return str(uuid.UUID(request_id))
    except ValueError:
        raise InvalidField("request_id", "must be a UUID such as 3f2b6c1e-8d4a-4e0b-9c57-2a1d5e7f9b10") from None


Result = TypeVar("Result")


def replay(
    uow: UnitOfWork, ttl_s: float, request_id: str, kind: type[Result], method: str, *request: object
) -> Result | None:
    """Claims `request_id` for this request; returns the first result (a `kind`) if it was used already."""
    if not request_id:
        return None
    fingerprint = request_fingerprint(method, *request)
    stored = uow.request_ids.claim(request_id, method, fingerprint, ttl_s)
    if stored is None:
        return None
    if (stored.method, stored.fingerprint) != (method, fingerprint):
        raise RequestIdReused()
    if stored.result is None:
        raise RequestInProgress("a request with this request_id is still in progress: try again")
    if not isinstance(stored.result, kind):  # the fingerprint names the method, so never seen
        raise RequestIdReused()
    return stored.result
