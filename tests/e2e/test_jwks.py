"""Keys published at a JWKS URL: served over local HTTP, rotated while an inventory server runs."""

from __future__ import annotations

import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.settings import InventorySettings
from servicekit.errors import Unauthenticated
from servicekit.jwt import AuthSettings, TokenVerifier
from servicekit.server_settings import ServerSettings
from servicekit.settings import SettingsError
from tests.helpers import TEST_AUTH, eventually, migrated_engine, rpc_error, serving

MIN_REFETCH_S = 3.0


class JwksServer:
    """An identity provider's JWKS endpoint: the keys it publishes, and how often it was asked."""

    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.fetches = 0
        published = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                published.fetches += 1
                body = json.dumps({"keys": [published.jwk(kid) for kid in published.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_port}/.well-known/jwks.json"

    def jwk(self, kid: str) -> dict[str, str]:
        return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.keys[kid].public_key())), "kid": kid}

    def publish_only(self, kid: str) -> ec.EllipticCurvePrivateKey:
        self.keys = {kid: ec.generate_private_key(ec.SECP256R1())}
        return self.keys[kid]

    def __enter__(self) -> JwksServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


def jwks_auth(url: str, **overrides: float) -> AuthSettings:
    return AuthSettings(
        algorithm="ES256",
        jwks_url=url,
        jwks_min_refetch_s=overrides.get("min_refetch_s", MIN_REFETCH_S),
        jwks_timeout_s=overrides.get("timeout_s", 2.0),
        jwks_max_age_s=overrides.get("max_age_s", 300.0),
        issuer=TEST_AUTH.issuer,
        audience=TEST_AUTH.audience,
    )


def signed_by(key: ec.EllipticCurvePrivateKey, kid: str, subject: str = "jwks-tester") -> str:
    now = int(time.time())
    claims = {"sub": subject, "roles": ["inventory.read"], "iss": TEST_AUTH.issuer, "aud": TEST_AUTH.audience}
    claims |= {"iat": now, "nbf": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def get_item_as(address: str, token: str) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = inventory_pb2_grpc.ItemServiceStub(channel)
        return rpc_error(stub.GetItem, pb.GetItemRequest(id=1), metadata=(("authorization", f"Bearer {token}"),))


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


@pytest.fixture
def address(jwks: JwksServer, tmp_path) -> Iterator[str]:
    """An inventory server verifying with the keys at the JWKS URL, which publishes key-1 when it starts."""
    jwks.publish_only("key-1")
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path / 'inventory.db'}", server=ServerSettings(), auth=jwks_auth(jwks.url)
    )
    with ExitStack() as stack:
        engine = stack.enter_context(migrated_engine(settings))
        yield f"127.0.0.1:{stack.enter_context(serving(settings, engine)).port}"


def test_a_rotated_jwks_is_fetched_again_and_its_new_key_accepted_without_a_restart(jwks, address):
    key_1 = jwks.keys["key-1"]
    assert get_item_as(address, signed_by(key_1, "key-1")).code() == grpc.StatusCode.NOT_FOUND  # authenticated

    key_2 = jwks.publish_only("key-2")
    token_2 = signed_by(key_2, "key-2")

    # Once the last fetch is MIN_REFETCH_S old, the unknown kid fetches the set again.
    assert eventually(lambda: get_item_as(address, token_2).code() == grpc.StatusCode.NOT_FOUND, MIN_REFETCH_S + 5)
    withdrawn = get_item_as(address, signed_by(key_1, "key-1"))
    assert withdrawn.code() == grpc.StatusCode.UNAUTHENTICATED
    assert withdrawn.details() == "token is signed by an unknown key"


def test_a_token_by_an_unknown_key_is_unauthenticated_and_a_flood_of_them_fetches_no_jwks_per_call(jwks, address):
    fetches_before = jwks.fetches
    stranger = ec.generate_private_key(ec.SECP256R1())

    errors = [get_item_as(address, signed_by(stranger, f"made-up-{n}")) for n in range(30)]

    assert {(error.code(), error.details()) for error in errors} == {
        (grpc.StatusCode.UNAUTHENTICATED, "token is signed by an unknown key")
    }
    assert jwks.fetches - fetches_before <= 1  # the server fetched when it started; within MIN_REFETCH_S, not again


def test_a_key_withdrawn_from_the_jwks_stops_verifying_once_the_keys_are_max_age_old(jwks):
    key_1 = jwks.publish_only("key-1")
    verifier = TokenVerifier(jwks_auth(jwks.url, min_refetch_s=0.2, max_age_s=0.5))
    assert verifier.verify(signed_by(key_1, "key-1")).subject == "jwks-tester"

    jwks.publish_only("key-2")

    attempts = itertools.count()

    def refused() -> bool:  # a new subject each time: no token is remembered as verified
        try:
            verifier.verify(signed_by(key_1, "key-1", subject=f"attempt-{next(attempts)}"))
        except Unauthenticated:
            return True
        return False

    assert eventually(refused, timeout_s=5)  # fetched again in the background, not by the call


def test_a_jwks_url_that_does_not_answer_delays_a_verification_by_its_timeout_at_most_and_once():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        started = time.monotonic()
        verifier = TokenVerifier(jwks_auth(url, timeout_s=0.5, min_refetch_s=60))
        token = signed_by(ec.generate_private_key(ec.SECP256R1()), "key-1")
        with pytest.raises(Unauthenticated, match="unknown key"):
            verifier.verify(token)
        first = time.monotonic() - started

        started = time.monotonic()
        with pytest.raises(Unauthenticated, match="unknown key"):
            verifier.verify(token)

    assert first < 2  # the start's fetch timed out; the first token waits no second fetch
    assert time.monotonic() - started < 0.2


def test_the_jwks_url_is_read_from_the_environment_and_checked():
    url = "https://login.example/.well-known/jwks.json"
    settings = AuthSettings.from_env(
        {"INVENTORY_JWT_ALGORITHM": "RS256", "INVENTORY_JWT_JWKS_URL": url, "INVENTORY_JWT_JWKS_TIMEOUT_S": "1.5"},
        "INVENTORY",
    )

    assert (settings.jwks_url, settings.jwks_timeout_s) == (url, 1.5)
    with pytest.raises(SettingsError, match="JWT_JWKS_URL must be an https"):
        AuthSettings(algorithm="RS256", jwks_url="file:///etc/passwd").check()


def test_a_token_verified_before_its_key_was_withdrawn_is_refused_after_the_keys_change(jwks):
    key_1 = jwks.publish_only("key-1")
    verifier = TokenVerifier(jwks_auth(jwks.url, min_refetch_s=0.2, max_age_s=0.5))
    token = signed_by(key_1, "key-1")
    assert verifier.verify(token).subject == "jwks-tester"  # now remembered as verified

    jwks.publish_only("key-2")

    def refused() -> bool:  # the very same token, the one an attacker with the old key would hold
        try:
            verifier.verify(token)
        except Unauthenticated:
            return True
        return False

    assert eventually(refused, timeout_s=5)


def test_a_jwks_cut_off_mid_answer_leaves_the_server_starting_and_the_token_unauthenticated():
    with socket.create_server(("127.0.0.1", 0)) as cutting:
        url = f"http://127.0.0.1:{cutting.getsockname()[1]}/jwks.json"

        def answer_half_then_reset() -> None:
            while True:
                try:
                    connection, _ = cutting.accept()
                except OSError:
                    return
                with connection:
                    connection.recv(65536)
                    connection.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"keys": [')
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        threading.Thread(target=answer_half_then_reset, daemon=True).start()
        verifier = TokenVerifier(jwks_auth(url, timeout_s=0.5))  # no traceback at start

        with pytest.raises(Unauthenticated, match="unknown key"):
            verifier.verify(signed_by(ec.generate_private_key(ec.SECP256R1()), "key-1"))


@pytest.mark.parametrize(
    "url", ["http://login.example/jwks.json", "http://10.0.0.7/jwks.json", "file:///etc/passwd", "ftp://x/jwks"]
)
def test_a_jwks_url_over_the_network_must_be_https(url):
    with pytest.raises(SettingsError, match="JWT_JWKS_URL must be an https"):
        AuthSettings(algorithm="ES256", jwks_url=url).check()


@pytest.mark.parametrize("url", ["https://login.example/jwks.json", "http://127.0.0.1:8080/jwks.json"])
def test_a_jwks_url_by_https_or_to_this_machine_is_accepted(url):
    AuthSettings(algorithm="ES256", jwks_url=url).check()
