"""A container health check through grpc.health.v1, with no grpc_health_probe binary:

    python -m servicekit.health_probe ADDRESS [SERVICE] [--ca-file CA [--cert-file C --key-file K]]

Exits 0 when the server answers SERVING for SERVICE (default "": the whole server), and 1
otherwise: NOT_SERVING (shutting down), an unknown service, no server, or no answer within
the timeout. A wildcard listen address (0.0.0.0:50051, [::]:50051, :50051) is probed on
localhost, so a Dockerfile can pass its listen address as it is. With a CA file it speaks
TLS, presenting a client certificate when given one (servers that require mTLS); each flag
falls back on an environment variable (HEALTH_PROBE_TLS_CA_FILE, ..._CERT_FILE,
..._KEY_FILE, ..._SERVER_NAME), so a container's probe command stays the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.settings import SettingsError
from servicekit.tls import ClientTls

DEFAULT_TIMEOUT_S = 3.0
_WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::")


def probe_target(address: str) -> str:
    """Where to dial to reach a server that listens on `address`."""
    host, _, port = address.rpartition(":")
    return f"localhost:{port}" if host in _WILDCARD_HOSTS else address


def probe_channel(address: str, tls: ClientTls) -> grpc.Channel:
    target = probe_target(address)
    if tls.enabled:
        return grpc.secure_channel(target, tls.channel_credentials(), options=tls.channel_options())
    return grpc.insecure_channel(target)


def serving_status(
    address: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
) -> str:
    """The status name the server reports for `service` (SERVING, NOT_SERVING, ...);
    raises grpc.RpcError when there is no answer (NOT_FOUND for an unknown service)."""
    with probe_channel(address, tls or ClientTls()) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


_TLS_FLAGS = {
    "ca-file": "PEM file of the CA that signed the server's certificate: TLS",
    "cert-file": "PEM file of a client certificate, for servers that require mTLS",
    "key-file": "PEM file of that certificate's key",
    "server-name": "the name to check the server's certificate against (default: the host probed)",
}

# The variable each TLS flag falls back on.
TLS_VARIABLES = {flag: f"HEALTH_PROBE_TLS_{flag.upper().replace('-', '_')}" for flag in _TLS_FLAGS}


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Exit 1 as for any failure: a container health check must not exit 2 (reserved).
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = _ArgumentParser(
        prog="python -m servicekit.health_probe", description="Exit 0 when a gRPC server reports SERVING, 1 otherwise."
    )
    parser.add_argument("address", help="host:port the server listens on")
    parser.add_argument("service", nargs="?", default="", help='a service name; "" (default): the whole server')
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default %(default)s)")
    for flag, meaning in _TLS_FLAGS.items():
        variable = TLS_VARIABLES[flag]
        parser.add_argument(f"--{flag}", default=env.get(variable, ""), help=f"{meaning} (default: ${variable})")
    args = parser.parse_args(argv)
    tls = ClientTls(args.ca_file, args.cert_file, args.key_file, args.server_name)
    what = f"{probe_target(args.address)} {args.service or '(server)'}"
    try:
        tls.check(lambda name: "--" + name.lower().replace("_", "-"))
        status = serving_status(args.address, args.service, args.timeout, tls)
    except SettingsError as error:
        print(f"{what}: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"{what}: {error.code().name} {error.details() or ''}".rstrip(), file=sys.stderr)
        return 1
    print(f"{what}: {status}", file=sys.stdout if status == "SERVING" else sys.stderr)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
