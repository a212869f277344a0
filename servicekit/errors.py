"""The errors the services raise. Each maps to one gRPC status in servicekit.status.

Plain Python, no grpc: domain and service layers raise these and never touch statuses.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client is meant to see; its message is shown to the client."""


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class InvalidField(DomainError):
    """A request field is invalid; `field` is its path in the request, e.g. "item.sku"."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class MalformedRequest(InvalidField):
    """The request's bytes are no valid message of its type: no field can be named."""

    def __init__(self, reason: str) -> None:
        DomainError.__init__(self, reason)
        self.field = ""
        self.reason = reason


class FailedPrecondition(DomainError):
    pass


class Conflict(DomainError):
    """A concurrent change won (a stale etag): re-read and retry."""


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class RetryLater(DomainError):
    """An error worth retrying after `retry_after_s` (sent as a google.rpc.RetryInfo)."""

    retry_after_s = 1.0


class ResourceExhausted(RetryLater):
    pass


class Unavailable(RetryLater):
    retry_after_s = 0.1


class DeadlineExceeded(DomainError):
    pass


class Cancelled(DomainError):
    """The caller gave up; nobody reads the answer."""
