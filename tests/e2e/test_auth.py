"""Every rejection of the JWT interceptor, over a real channel to a real inventory server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crm.v1 import crm_pb2, crm_pb2_grpc
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_client.roles import ROLE_FOR_METHOD
from inventory_svc.settings import InventorySettings
from servicekit.jwt import AuthSettings
from servicekit.server_settings import ServerSettings
from tests.helpers import TEST_AUTH, authorized_channel, create, migrated_engine, mint, new_item, rpc_error, serving

ROOT = Path(__file__).resolve().parents[2]


def claims(**overrides) -> dict:
    now = int(time.time())
    values = {
        "sub": "tester",
        "roles": ["inventory.read", "inventory.write"],
        "iss": TEST_AUTH.issuer,
        "aud": TEST_AUTH.audience,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def hs256(key: str = TEST_AUTH.secret, **overrides) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="HS256")


def get_item_with(address: str, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        stub = inventory_pb2_grpc.ItemServiceStub(channel)
        return rpc_error(stub.GetItem, pb.GetItemRequest(id=1), metadata=metadata)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_call_without_token_is_unauthenticated(inventory_address_any_db):
    error = get_item_with(inventory_address_any_db, ())

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing authorization metadata: 'Bearer <token>'"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    # Minted when the test runs: minted at collection, they could expire before it does.
    [
        (lambda: hs256(key="another-secret-" + "y" * 40), "token signature is invalid"),
        (lambda: hs256(aud="someone-else"), "token is meant for another audience"),
        (lambda: hs256(iss="https://evil.example"), "token comes from another issuer"),
        (lambda: hs256(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=None), "token has expired"),
        (lambda: hs256(nbf=int(time.time()) + 3600), "token is not valid yet"),
        (lambda: hs256(exp=None), "token lacks a required claim"),
        (lambda: hs256(exp=10**400), "token expiry is out of range"),
        (lambda: hs256(sub=None), "token lacks a required claim"),
        (lambda: hs256(sub="x" * 256), "token subject is longer than 255 characters"),
        (lambda: jwt.encode(claims(), None, algorithm="none"), "token algorithm is not accepted"),
        (lambda: hs256(roles=5), "token roles claim is malformed"),
        (lambda: hs256(roles={"inventory.read": True}), "token roles claim is malformed"),
        (lambda: "not.a.jwt", "token is malformed"),
    ],
    ids=[
        "other-key",
        "other-audience",
        "other-issuer",
        "expired",
        "not-yet-valid",
        "no-exp",
        "huge-exp",
        "no-sub",
        "long-sub",
        "alg-none",
        "roles-number",
        "roles-object",
        "malformed",
    ],
)
@pytest.mark.parametrize("service", ["inventory", "crm"])
def test_bad_token_is_unauthenticated_with_a_short_reason(
    inventory_address_any_db, crm_address_any_db, service, make_token, reason
):
    token = make_token()
    if service == "inventory":
        error = get_item_with(inventory_address_any_db, bearer(token))
    else:
        with grpc.insecure_channel(crm_address_any_db) as channel:
            stub = crm_pb2_grpc.CustomerItemsServiceStub(channel)
            error = rpc_error(stub.GetMyItem, crm_pb2.GetMyItemRequest(id=1), metadata=bearer(token))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == reason


def test_non_bearer_authorization_is_unauthenticated(inventory_address_any_db):
    error = get_item_with(inventory_address_any_db, (("authorization", "Basic dXNlcjpwYXNz"),))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_read_only_token_cannot_write_and_nothing_changes(inventory_address, items_stub):
    with authorized_channel(inventory_address, mint(roles=("inventory.read",))) as channel:
        reader = inventory_pb2_grpc.ItemServiceStub(channel)
        error = rpc_error(reader.CreateItem, pb.CreateItemRequest(item=new_item()))
        listed = reader.ListItems(pb.ListItemsRequest())

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "this call needs the inventory.write role"
    assert listed.total_size == 0


def test_write_only_token_cannot_read(inventory_address, items_stub):
    created = create(items_stub)
    with authorized_channel(inventory_address, mint(roles=("inventory.write",))) as channel:
        error = rpc_error(inventory_pb2_grpc.ItemServiceStub(channel).GetItem, pb.GetItemRequest(id=created.id))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_customer_token_cannot_reach_inventory(inventory_address_any_db):
    with authorized_channel(inventory_address_any_db, mint(subject="alice", roles=("customer",))) as channel:
        stub = inventory_pb2_grpc.ItemServiceStub(channel)
        error = rpc_error(stub.ListCustomerItems, pb.ListCustomerItemsRequest(customer_id="alice"))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_needs_no_token(inventory_address_any_db):
    with grpc.insecure_channel(inventory_address_any_db) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_every_inventory_rpc_has_the_role_its_contract_says():
    """The .proto decides: a method marked NO_SIDE_EFFECTS needs inventory.read, every other
    one (a new RPC too, until its contract marks it a read) inventory.write, on both services."""
    no_side_effects = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    expected = {
        f"/inventory.v1.{service.name}/{method.name}": (
            "inventory.read" if method.GetOptions().idempotency_level == no_side_effects else "inventory.write"
        )
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert {"/inventory.v1.ReservationService/ReserveStock", "/inventory.v1.ItemService/GetItem"} <= set(expected)

    assert expected == ROLE_FOR_METHOD


# --- asymmetric keys: a server that verifies without holding the signing key -------------


def _pem_private(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem_public(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture
def server_with(tmp_path):
    """Starts an inventory server verifying with the given AuthSettings; gives its address."""
    with ExitStack() as stack:

        def start(auth: AuthSettings) -> str:
            settings = InventorySettings(
                database_url=f"sqlite:///{tmp_path / 'inventory.db'}", server=ServerSettings(), auth=auth
            )
            engine = stack.enter_context(migrated_engine(settings))
            return f"127.0.0.1:{stack.enter_context(serving(settings, engine)).port}"

        yield start


def test_rs256_server_with_only_the_public_pem_accepts_tokens_signed_by_the_private_key(server_with, rsa_key):
    address = server_with(
        AuthSettings(
            algorithm="RS256", public_key=_pem_public(rsa_key), issuer=TEST_AUTH.issuer, audience=TEST_AUTH.audience
        )
    )
    token = jwt.encode(claims(roles=["inventory.read"]), _pem_private(rsa_key), algorithm="RS256")

    assert get_item_with(address, bearer(token)).code() == grpc.StatusCode.NOT_FOUND  # authenticated


def test_rs256_server_refuses_an_hs256_token_keyed_with_its_public_key(server_with, rsa_key):
    public_pem = _pem_public(rsa_key)
    address = server_with(
        AuthSettings(algorithm="RS256", public_key=public_pem, issuer=TEST_AUTH.issuer, audience=TEST_AUTH.audience)
    )
    # The classic confusion attack: HMAC keyed with the public key the verifier trusts
    # (made by hand: PyJWT itself refuses a PEM as an HMAC key).
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64(json.dumps(claims()))}"
    signature = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(signature)}"

    error = get_item_with(address, bearer(token))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "token algorithm is not accepted"


def test_es256_server_with_a_jwks_picks_the_key_named_by_kid(server_with, ec_key, rsa_key):
    other = ec.generate_private_key(ec.SECP256R1())
    jwks = '{{"keys": [{}, {}, {}]}}'.format(
        jwt.algorithms.ECAlgorithm.to_jwk(other.public_key()).replace("{", '{"kid": "old", ', 1),
        jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()).replace("{", '{"kid": "current", ', 1),
        # Identity providers publish mixed sets: a token must not pick a key of another type.
        jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()).replace("{", '{"kid": "rsa", ', 1),
    )
    address = server_with(
        AuthSettings(algorithm="ES256", public_key=jwks, issuer=TEST_AUTH.issuer, audience=TEST_AUTH.audience)
    )

    good = jwt.encode(claims(), _pem_private(ec_key), algorithm="ES256", headers={"kid": "current"})
    wrong_kid = jwt.encode(claims(), _pem_private(ec_key), algorithm="ES256", headers={"kid": "old"})
    unknown_kid = jwt.encode(claims(), _pem_private(ec_key), algorithm="ES256", headers={"kid": "nope"})
    rsa_kid = jwt.encode(claims(), _pem_private(ec_key), algorithm="ES256", headers={"kid": "rsa"})

    assert get_item_with(address, bearer(good)).code() == grpc.StatusCode.NOT_FOUND  # authenticated
    assert get_item_with(address, bearer(wrong_kid)).details() == "token signature is invalid"
    assert get_item_with(address, bearer(unknown_kid)).details() == "token is signed by an unknown key"
    assert get_item_with(address, bearer(rsa_kid)).details() == "token is signed by an unknown key"


# --- minting from the shell ------------------------------------------------------------


def test_mint_token_script_makes_a_token_the_server_accepts(inventory_address, items_stub):
    created = create(items_stub)
    env = {
        **os.environ,
        "JWT_SECRET": TEST_AUTH.secret,
        "JWT_ISSUER": TEST_AUTH.issuer,
        "JWT_AUDIENCE": TEST_AUTH.audience,
    }
    minted = subprocess.run(
        [str(ROOT / "scripts" / "mint_token"), "--subject", "ops", "--roles", "inventory.read"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    with authorized_channel(inventory_address, minted.stdout.strip()) as channel:
        item = inventory_pb2_grpc.ItemServiceStub(channel).GetItem(pb.GetItemRequest(id=created.id)).item

    assert item == created
