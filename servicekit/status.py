"""One table from errors to gRPC statuses, and the interceptor that applies it."""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Iterator, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_interceptor.server import ServerInterceptor
from grpc_status import rpc_status

from servicekit import errors

log = logging.getLogger(__name__)

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


def status_code_for(error: errors.DomainError) -> grpc.StatusCode:
    return next(
        STATUS_FOR_ERROR[cls] for cls in type(error).__mro__ if cls in STATUS_FOR_ERROR
    )


def to_rpc_status(error: errors.DomainError) -> grpc.Status:
    code = status_code_for(error)
    status = status_pb2.Status(code=code.value[0], message=str(error))
    if isinstance(error, errors.InvalidField):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.reason
        )
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    )


class StatusMappingInterceptor(ServerInterceptor):
    """Turns raised errors into statuses; anything unexpected becomes a bare INTERNAL.

    First in the server's interceptor list, so that it also maps what later
    interceptors (auth) raise.
    """

    def intercept(
        self, method: Callable[..., Any], request_or_iterator: Any,
        context: grpc.ServicerContext, method_name: str,
    ) -> Any:
        try:
            result = method(request_or_iterator, context)
        except Exception as error:
            self._abort(error, context, method_name)
        if inspect.isgenerator(result):
            return self._mapped_stream(result, context, method_name)  # a server-streaming method
        return result

    def _mapped_stream(self, stream: Iterator[Any], context: grpc.ServicerContext, method_name: str) -> Iterator[Any]:
        try:
            yield from stream
        except Exception as error:
            self._abort(error, context, method_name)

    @staticmethod
    def _abort(error: Exception, context: grpc.ServicerContext, method_name: str) -> NoReturn:
        if isinstance(error, errors.DomainError):
            _abort_with(context, to_rpc_status(error))
        if _is_abort(error, context):
            raise error  # context.abort() inside the handler: the status is already set
        log.error("unexpected error in %s", method_name, exc_info=error)
        _abort_with(context, internal_status())


def _abort_with(context: grpc.ServicerContext, status: grpc.Status) -> NoReturn:
    # Setting the code first lets wrappers of the context (OpenTelemetry's) record it;
    # abort_with_status alone passes them by.
    context.set_code(status.code)
    context.set_details(status.details)
    context.abort_with_status(status)


def _is_abort(error: Exception, context: grpc.ServicerContext) -> bool:
    # grpc signals context.abort() by raising a bare Exception after setting the code.
    return type(error) is Exception and context.code() not in (None, grpc.StatusCode.OK)
