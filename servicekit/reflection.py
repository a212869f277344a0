"""Server reflection under both of its service names: `grpc.reflection.v1alpha`, which
grpcio-reflection serves (grpcurl asks for it), and `grpc.reflection.v1`, which buf curl,
Node and newer grpcurl ask for first. grpcio-reflection has no v1 yet; the two protos are
wire-identical, so one servicer answers both, and a v1 copy of the v1alpha descriptor lets a
client describe the v1 service too."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
SERVICE_NAMES = (reflection.SERVICE_NAME, V1_SERVICE_NAME)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Lists `service_names` and both reflection services, under both names."""
    _add_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICE_NAMES))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, v1_handlers),))


def _add_v1_descriptor() -> None:
    """Adds grpc/reflection/v1/reflection.proto to the default pool (which reflection
    answers from), made from v1alpha's by renaming its package; once per process."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    v1 = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1)
    v1.name, v1.package = V1_FILE, V1_PACKAGE
    v1.options.Clear()  # v1alpha's java_package and the like name v1alpha
    for message in v1.message_type:
        for message_field in message.field:
            if message_field.HasField("type_name"):  # proto2: setting "" would make a scalar look typed
                message_field.type_name = _in_v1(message_field.type_name)
    for method in (method for service in v1.service for method in service.method):
        method.input_type, method.output_type = _in_v1(method.input_type), _in_v1(method.output_type)
    pool.AddSerializedFile(v1.SerializeToString())


def _in_v1(type_name: str) -> str:
    """ ".grpc.reflection.v1alpha.ListServiceResponse" -> ".grpc.reflection.v1.ListServiceResponse"."""
    return type_name.replace(f".{V1ALPHA_PACKAGE}.", f".{V1_PACKAGE}.", 1)
