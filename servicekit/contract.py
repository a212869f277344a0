"""What a service's contract says of its methods: which only read (marked
`option idempotency_level = NO_SIDE_EFFECTS;` in the .proto) and which write (everything
else). Role maps and clients' retry lists are built from this, never listed by hand, so a
method is a write until its contract says otherwise."""

from __future__ import annotations

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions


def is_reading(method: MethodDescriptor) -> bool:
    """Whether the contract promises this method changes nothing."""
    return method.GetOptions().idempotency_level == MethodOptions.NO_SIDE_EFFECTS


def method_path(method: MethodDescriptor) -> str:
    """The method's name on the wire, as interceptors see it: /package.Service/Method."""
    return f"/{method.containing_service.full_name}/{method.name}"


def reading_methods(service: ServiceDescriptor) -> tuple[str, ...]:
    """The names of the methods marked NO_SIDE_EFFECTS, in the contract's order."""
    return tuple(method.name for method in service.methods if is_reading(method))


def retried_methods(service: ServiceDescriptor) -> tuple[str, ...]:
    """The reads a channel may send again on UNAVAILABLE: the unary ones. A stream is
    resumed by its caller (from the cursor it has seen), not replayed by the channel."""
    return tuple(method.name for method in service.methods if is_reading(method) and not method.server_streaming)


def method_roles(service: ServiceDescriptor, *, read_role: str, write_role: str) -> dict[str, str]:
    """The role each method needs, by wire name: `read_role` for the reads, `write_role`
    for every other method, so a write can never be called with the read role."""
    return {method_path(method): read_role if is_reading(method) else write_role for method in service.methods}
