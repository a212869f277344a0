"""One table from errors to gRPC statuses (servicekit.pipeline applies it to every call), and
the google.rpc details each answer carries: ErrorInfo always, BadRequest, PreconditionFailure
and RetryInfo when the error has them."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from servicekit import errors

STATUS_FOR_ERROR: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidField: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}

INTERNAL_MESSAGE = "internal error"
# What one answer carries at most: its trailers must stay under the 8 KiB that grpc clients
# accept by default, and a request of 100 lines can break a rule on every line.
MAX_VIOLATIONS_SENT = 20
MAX_MESSAGE_CHARS = 1_000


def status_code_for(error: errors.DomainError) -> grpc.StatusCode:
    return next(STATUS_FOR_ERROR[cls] for cls in type(error).__mro__ if cls in STATUS_FOR_ERROR)


def error_domain(method: str) -> str:
    """The ErrorInfo domain of a method's answers: its package, "inventory.v1" for
    "/inventory.v1.ItemService/GetItem"."""
    service = method.lstrip("/").split("/", 1)[0]
    return service.rpartition(".")[0]


def to_rpc_status(error: errors.DomainError, domain: str) -> grpc.Status:
    """The status for `error` as the service of `domain` answers it."""
    code = status_code_for(error)
    status = status_pb2.Status(code=code.value[0], message=_capped_message(error))
    _add_detail(status, error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata))
    if error.field_violations:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.field_violations[:MAX_VIOLATIONS_SENT]
        ]
        _add_detail(status, error_details_pb2.BadRequest(field_violations=violations))
    if error.precondition_violations:
        failures = [
            error_details_pb2.PreconditionFailure.Violation(type=v.type, subject=v.subject, description=v.description)
            for v in error.precondition_violations[:MAX_VIOLATIONS_SENT]
        ]
        _add_detail(status, error_details_pb2.PreconditionFailure(violations=failures))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        _add_detail(status, error_details_pb2.RetryInfo(retry_delay=delay))
    return _to_grpc_status(status)


def _capped_message(error: errors.DomainError) -> str:
    message = str(error)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS].rstrip() + " ..."
    total = max(len(error.field_violations), len(error.precondition_violations))
    if total > MAX_VIOLATIONS_SENT:
        message += f" (the details name the first {MAX_VIOLATIONS_SENT} of {total})"
    return message


def _add_detail(status: status_pb2.Status, detail: Message) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


def internal_status() -> grpc.Status:
    return _to_grpc_status(status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE))


def _to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    converted: grpc.Status = rpc_status.to_status(status)  # grpcio-status ships no types
    return converted
