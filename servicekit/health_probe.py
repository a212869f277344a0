"""A container health check through grpc.health.v1, with no grpc_health_probe binary:

    python -m servicekit.health_probe ADDRESS [SERVICE]

Exits 0 when the server answers SERVING for SERVICE (default "": the whole server), and 1
otherwise: NOT_SERVING (shutting down), an unknown service, no server, or no answer within
the timeout. A wildcard listen address (0.0.0.0:50051, [::]:50051, :50051) is probed on
localhost, so a Dockerfile can pass its listen address as it is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TIMEOUT_S = 3.0
_WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::")


def probe_target(address: str) -> str:
    """Where to dial to reach a server that listens on `address`."""
    host, _, port = address.rpartition(":")
    return f"localhost:{port}" if host in _WILDCARD_HOSTS else address


def serving_status(address: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """The status name the server reports for `service` (SERVING, NOT_SERVING, ...);
    raises grpc.RpcError when there is no answer (NOT_FOUND for an unknown service)."""
    with grpc.insecure_channel(probe_target(address)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Exit 1 as for any failure: a container health check must not exit 2 (reserved).
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _ArgumentParser(
        prog="python -m servicekit.health_probe", description="Exit 0 when a gRPC server reports SERVING, 1 otherwise."
    )
    parser.add_argument("address", help="host:port the server listens on")
    parser.add_argument("service", nargs="?", default="", help='a service name; "" (default): the whole server')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default %(default)s)")
    args = parser.parse_args(argv)
    what = f"{probe_target(args.address)} {args.service or '(server)'}"
    try:
        status = serving_status(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        print(f"{what}: {error.code().name} {error.details() or ''}".rstrip(), file=sys.stderr)
        return 1
    print(f"{what}: {status}", file=sys.stdout if status == "SERVING" else sys.stderr)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
