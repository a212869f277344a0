"""The errors the services raise. Each maps to one gRPC status in servicekit.status and
carries a stable `reason` (google.rpc.ErrorInfo): one class, one reason, one row of the table
in docs/api.md. The domain of the reason is the service that answers (inventory.v1, crm.v1).

Plain Python, no grpc: domain and service layers raise these and never touch statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One broken field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One unmet precondition (google.rpc.PreconditionFailure.Violation): `type` such as
    "STOCK", `subject` such as "items/42"."""

    type: str
    subject: str
    description: str


class DomainError(Exception):
    """Base of every error a client is meant to see; its message is shown to the client.

    A client that unpacks an answer sets `reason`, `domain` and the details from the wire."""

    reason = "UNKNOWN"
    retry_after_s: float | None = None
    field_violations: tuple[FieldViolation, ...] = ()
    precondition_violations: tuple[PreconditionViolation, ...] = ()

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.domain = ""  # who answered; set by servicekit.calls on the client side


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class InvalidField(DomainError):
    """Request fields are invalid: `field_violations` names each by its path in the request,
    e.g. "item.sku"; `field` and `description` are the first one's."""

    reason = "INVALID_FIELDS"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"invalid {field}: {description}")
        self.field_violations = (FieldViolation(field, description),)

    @classmethod
    def of(cls, violations: Sequence[FieldViolation], message: str = "") -> InvalidField:
        """One error for every broken field of a request; the message names them all."""
        error = cls.__new__(cls)
        DomainError.__init__(error, message or "; ".join(f"invalid {v.field}: {v.description}" for v in violations))
        error.field_violations = tuple(violations)
        return error

    @property
    def field(self) -> str:
        return self.field_violations[0].field if self.field_violations else ""

    @property
    def description(self) -> str:
        return self.field_violations[0].description if self.field_violations else str(self)


class FieldChecks:
    """Collects every broken field of a request, so that one answer names them all."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def run(self, check: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Calls a check that raises InvalidField and keeps its violations instead."""
        try:
            check(*args, **kwargs)
        except InvalidField as error:
            self.violations.extend(error.field_violations)

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidField.of(self.violations)


class MalformedRequest(InvalidField):
    """The request's bytes are no valid message of its type: no field can be named."""

    reason = "MALFORMED_REQUEST"

    def __init__(self, description: str) -> None:
        DomainError.__init__(self, description)
        self.field_violations = ()


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class Conflict(DomainError):
    """A concurrent change won: re-read and retry."""

    reason = "ABORTED"


class RequestInProgress(Conflict):
    """The first call with this request_id has not finished yet."""

    reason = "REQUEST_IN_PROGRESS"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class TokenMissing(Unauthenticated):
    reason = "TOKEN_MISSING"


class TokenExpired(Unauthenticated):
    reason = "TOKEN_EXPIRED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class RetryLater(DomainError):
    """An error worth retrying after `retry_after_s` (sent as a google.rpc.RetryInfo)."""

    retry_after_s: float | None = 1.0


class ResourceExhausted(RetryLater):
    reason = "RESOURCE_EXHAUSTED"


class TooManyCalls(ResourceExhausted):
    """More calls in flight than the process, or one token subject, may have."""

    reason = "TOO_MANY_CALLS"


class Unavailable(RetryLater):
    reason = "UNAVAILABLE"
    retry_after_s = 0.1


class ShuttingDown(Unavailable):
    reason = "SHUTTING_DOWN"


class DeadlineExceeded(DomainError):
    reason = "DEADLINE_EXCEEDED"


class Cancelled(DomainError):
    """The caller gave up; nobody reads the answer."""

    reason = "CANCELLED"
