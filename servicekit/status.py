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
# accept by default, and a request of 100 lines can break a rule on every line, each with
# text a client sent (an update_mask path, say) that may be long and far from ASCII.
MAX_TRAILER_BYTES = 6_000
MAX_VIOLATIONS_SENT = 20
MAX_MESSAGE_BYTES = 1_000
MAX_TEXT_BYTES = 200


def status_code_for(error: errors.DomainError) -> grpc.StatusCode:
    return next(STATUS_FOR_ERROR[cls] for cls in type(error).__mro__ if cls in STATUS_FOR_ERROR)


def error_domain(method: str) -> str:
    """The ErrorInfo domain of a method's answers: its package, "inventory.v1" for
    "/inventory.v1.ItemService/GetItem"."""
    service = method.lstrip("/").split("/", 1)[0]
    return service.rpartition(".")[0]


def to_rpc_status(error: errors.DomainError, domain: str) -> grpc.Status:
    """The status for `error` as the service of `domain` answers it: with fewer violations
    named (and the message saying how many there were) when all of them would not fit."""
    total = max(len(error.field_violations), len(error.precondition_violations))
    for shown in (MAX_VIOLATIONS_SENT, 5, 0):
        status = _status_of(error, domain, shown, total)
        if _trailer_bytes(status) <= MAX_TRAILER_BYTES:
            break
    return _to_grpc_status(status)


def _status_of(error: errors.DomainError, domain: str, shown: int, total: int) -> status_pb2.Status:
    message = _cut(str(error), MAX_MESSAGE_BYTES)
    if total > shown:
        message += f" (the details name the first {shown} of {total})"
    status = status_pb2.Status(code=status_code_for(error).value[0], message=message)
    metadata = {key: _cut(value, MAX_TEXT_BYTES) for key, value in error.metadata.items()}
    _add_detail(status, error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=metadata))
    if error.field_violations and shown:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=_cut(v.field, MAX_TEXT_BYTES), description=_cut(v.description, MAX_TEXT_BYTES)
            )
            for v in error.field_violations[:shown]
        ]
        _add_detail(status, error_details_pb2.BadRequest(field_violations=violations))
    if error.precondition_violations and shown:
        failures = [
            error_details_pb2.PreconditionFailure.Violation(
                type=v.type, subject=_cut(v.subject, MAX_TEXT_BYTES), description=_cut(v.description, MAX_TEXT_BYTES)
            )
            for v in error.precondition_violations[:shown]
        ]
        _add_detail(status, error_details_pb2.PreconditionFailure(violations=failures))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        _add_detail(status, error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def _cut(text: str, max_bytes: int) -> str:
    """`text`, cut to at most `max_bytes` of UTF-8 (and marked so) when longer."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore").rstrip() + " ..."


def _trailer_bytes(status: status_pb2.Status) -> int:
    """What the answer's trailers take: grpc-message, percent-encoded (3 bytes for each byte
    past printable ASCII), and grpc-status-details-bin, in base64."""
    message = status.message.encode()
    encoded_message = sum(1 if 0x20 <= byte < 0x7F and byte != 0x25 else 3 for byte in message)
    return encoded_message + (len(status.SerializeToString()) + 2) // 3 * 4


def _add_detail(status: status_pb2.Status, detail: Message) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


def internal_status() -> grpc.Status:
    return _to_grpc_status(status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE))


def _to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    converted: grpc.Status = rpc_status.to_status(status)  # grpcio-status ships no types
    return converted
