"""TLS and mTLS over real channels, with throwaway CAs: who gets in, who is refused, the CRM
calling inventory over mTLS, the health probe, and a renewed certificate served without a
restart. TLS is about the channel, not the data: one SQLite database serves every test."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Engine

from crm.v1 import crm_pb2 as crm
from crm.v1 import crm_pb2_grpc
from crm_svc.settings import CrmSettings
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_client import InventoryClient
from inventory_svc.settings import InventorySettings
from servicekit import health_probe
from servicekit.credentials import BearerTokenInterceptor
from servicekit.server_settings import ServerSettings
from servicekit.settings import EnvReader, SettingsError
from servicekit.tls import ClientTls, ServerTls
from tests.helpers import (
    TEST_AUTH,
    authorized_channel,
    migrated_engine,
    mint,
    new_item,
    rpc_error,
    serving,
    serving_crm,
)


@dataclass(frozen=True)
class Authority:
    """A throwaway certificate authority that signs leaf certificates for 127.0.0.1 and localhost."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def new(cls, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            _validity(x509.CertificateBuilder())
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, serial: int | None = None) -> tuple[bytes, bytes, int]:
        """A certificate (PEM), its key (PEM) and its serial number."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = serial or x509.random_serial_number()
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        certificate = (
            _validity(x509.CertificateBuilder())
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem, serial


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


@dataclass(frozen=True)
class Files:
    """One party's PEM files: the CA it trusts, its certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def write(self, authority: Authority, name: str, serial: int | None = None) -> int:
        """Writes a new certificate (key first, so that a reader never pairs a new
        certificate with an old key for long) and returns its serial number."""
        cert, key, serial = authority.issue(name, serial)
        self.ca.write_bytes(authority.pem())
        self.key.write_bytes(key)
        self.cert.write_bytes(cert)
        return serial

    def client_tls(self, with_certificate: bool = True) -> ClientTls:
        if not with_certificate:
            return ClientTls(ca_file=str(self.ca))
        return ClientTls(ca_file=str(self.ca), cert_file=str(self.cert), key_file=str(self.key))


def files_in(folder: Path, party: str) -> Files:
    folder.mkdir(exist_ok=True)
    return Files(folder / f"{party}-ca.crt", folder / f"{party}.crt", folder / f"{party}.key")


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InventorySettings, Engine]]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('tls-db') / 'inventory.db'}"
    settings = InventorySettings(database_url=database_url, server=ServerSettings(), auth=TEST_AUTH)
    with migrated_engine(settings) as engine:
        yield settings, engine


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.new("test CA")


@pytest.fixture
def server_files(tmp_path: Path, authority: Authority) -> Files:
    files = files_in(tmp_path, "server")
    files.write(authority, "inventory")
    return files


@pytest.fixture
def client_files(tmp_path: Path, authority: Authority) -> Files:
    files = files_in(tmp_path, "client")
    files.write(authority, "crm")
    return files


@contextmanager
def inventory_serving(sqlite_engine: tuple[InventorySettings, Engine], tls: ServerTls) -> Iterator[str]:
    settings, engine = sqlite_engine
    with serving(replace(settings, server=ServerSettings(tls=tls)), engine) as served:
        yield f"127.0.0.1:{served.port}"


def tls_server(files: Files) -> ServerTls:
    return ServerTls(cert_file=str(files.cert), key_file=str(files.key))


def mtls_server(files: Files, client_ca: Path) -> ServerTls:
    return replace(tls_server(files), client_ca_file=str(client_ca))


def secure_stub(address: str, tls: ClientTls) -> tuple[grpc.Channel, inventory_pb2_grpc.ItemServiceStub]:
    channel = grpc.intercept_channel(
        grpc.secure_channel(address, tls.channel_credentials()), BearerTokenInterceptor(mint)
    )
    return channel, inventory_pb2_grpc.ItemServiceStub(channel)


def refusal(address: str, tls: ClientTls | None) -> grpc.RpcError:
    """How a Check call on a new channel with these credentials (None: plaintext) fails."""
    channel = grpc.secure_channel(address, tls.channel_credentials()) if tls else grpc.insecure_channel(address)
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        return rpc_error(health.Check, health_pb2.HealthCheckRequest(), timeout=5)


def served_serial(address: str, ca: Path) -> int:
    """The serial number of the certificate a new TLS handshake is served."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls_socket,
    ):
        der = tls_socket.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_tls_client_creates_and_reads_an_item(sqlite_engine, server_files):
    ca_only = server_files.client_tls(with_certificate=False)
    with (
        inventory_serving(sqlite_engine, tls_server(server_files)) as address,
        InventoryClient.connect(address, mint, tls=ca_only) as client,
    ):
        created = client.create_item(new_item())
        assert client.get_item(created.id) == created


def test_a_plaintext_client_is_refused_by_a_tls_server(sqlite_engine, server_files):
    with inventory_serving(sqlite_engine, tls_server(server_files)) as address:
        assert refusal(address, None).code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_servers_ca_refuses_it(sqlite_engine, server_files, tmp_path):
    stranger = files_in(tmp_path / "stranger", "client")
    stranger.write(Authority.new("another CA"), "crm")
    with inventory_serving(sqlite_engine, tls_server(server_files)) as address:
        assert refusal(address, stranger.client_tls(with_certificate=False)).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_a_client_whose_certificate_the_client_ca_signed(sqlite_engine, server_files, client_files):
    with inventory_serving(sqlite_engine, mtls_server(server_files, client_files.ca)) as address:
        channel, stub = secure_stub(address, client_files.client_tls())
        with channel:
            created = stub.CreateItem(pb.CreateItemRequest(item=new_item()), timeout=5).item
            assert stub.GetItem(pb.GetItemRequest(id=created.id), timeout=5).item == created


def test_mtls_refuses_a_client_without_a_certificate(sqlite_engine, server_files, client_files):
    with inventory_serving(sqlite_engine, mtls_server(server_files, client_files.ca)) as address:
        no_certificate = client_files.client_tls(with_certificate=False)
        assert refusal(address, no_certificate).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_certificate_from_another_ca(sqlite_engine, server_files, client_files, tmp_path):
    stranger = files_in(tmp_path / "stranger", "client")
    stranger.write(Authority.new("another CA"), "crm")
    # The stranger trusts the server's CA, so only its own certificate can be the reason.
    foreign = ClientTls(ca_file=str(server_files.ca), cert_file=str(stranger.cert), key_file=str(stranger.key))
    with inventory_serving(sqlite_engine, mtls_server(server_files, client_files.ca)) as address:
        assert refusal(address, foreign).code() == grpc.StatusCode.UNAVAILABLE


def test_the_crm_calls_inventory_over_mtls(sqlite_engine, server_files, client_files):
    with inventory_serving(sqlite_engine, mtls_server(server_files, client_files.ca)) as address:
        channel, stub = secure_stub(address, client_files.client_tls())
        with channel:
            created = stub.CreateItem(pb.CreateItemRequest(item=new_item(customer_id="tls-alice")), timeout=5).item
        settings = CrmSettings(
            server=ServerSettings(),
            inventory_target=address,
            inventory_tls=client_files.client_tls(),
            auth=TEST_AUTH,
            inventory_auth=TEST_AUTH,
        )
        with serving_crm(settings) as crm_running:
            customer = mint(subject="tls-alice", roles=("customer",))
            with authorized_channel(f"127.0.0.1:{crm_running.port}", customer) as crm_channel:
                reply = crm_pb2_grpc.CustomerItemsServiceStub(crm_channel).ListMyItems(
                    crm.ListMyItemsRequest(), timeout=5
                )
    assert [item.id for item in reply.items] == [created.id]


def test_the_crm_without_a_client_certificate_is_refused_by_mtls_inventory(sqlite_engine, server_files, client_files):
    with inventory_serving(sqlite_engine, mtls_server(server_files, client_files.ca)) as address:
        settings = CrmSettings(
            server=ServerSettings(),
            inventory_target=address,
            inventory_tls=client_files.client_tls(with_certificate=False),
            auth=TEST_AUTH,
            inventory_auth=TEST_AUTH,
        )
        with serving_crm(settings) as crm_running:
            customer = mint(subject="tls-alice", roles=("customer",))
            with authorized_channel(f"127.0.0.1:{crm_running.port}", customer) as crm_channel:
                stub = crm_pb2_grpc.CustomerItemsServiceStub(crm_channel)
                error = rpc_error(stub.ListMyItems, crm.ListMyItemsRequest(), timeout=10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_renewed_certificate_is_served_without_a_restart(sqlite_engine, server_files, authority):
    with inventory_serving(sqlite_engine, tls_server(server_files)) as address:
        first = served_serial(address, server_files.ca)
        renewed = server_files.write(authority, "inventory", serial=first + 1)
        assert served_serial(address, server_files.ca) == renewed
        with InventoryClient.connect(address, mint, tls=server_files.client_tls(with_certificate=False)) as client:
            assert client.create_item(new_item()).id


def test_a_half_written_renewal_keeps_the_certificate_in_use(sqlite_engine, server_files, authority):
    with inventory_serving(sqlite_engine, tls_server(server_files)) as address:
        first = served_serial(address, server_files.ca)
        new_certificate, _, _ = authority.issue("inventory")
        server_files.cert.write_bytes(new_certificate)  # its key not written yet
        assert served_serial(address, server_files.ca) == first


def test_the_health_probe_speaks_tls_and_mtls(sqlite_engine, server_files, client_files):
    with inventory_serving(sqlite_engine, mtls_server(server_files, client_files.ca)) as address:
        with_flags = [address, "--ca-file", str(server_files.ca)]
        with_flags += ["--cert-file", str(client_files.cert), "--key-file", str(client_files.key)]
        from_env = {
            "HEALTH_PROBE_TLS_CA_FILE": str(server_files.ca),
            "HEALTH_PROBE_TLS_CERT_FILE": str(client_files.cert),
            "HEALTH_PROBE_TLS_KEY_FILE": str(client_files.key),
        }
        assert health_probe.main(with_flags, env={}) == 0
        assert health_probe.main([address, "inventory.v1.ItemService"], env=from_env) == 0
        assert health_probe.main([address, "--timeout", "2"], env={}) == 1, "plaintext must be refused"
        assert health_probe.main([address, "--ca-file", str(server_files.ca)], env={}) == 1, "no client certificate"


def test_tls_settings_come_in_pairs():
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and TLS_KEY_FILE go together"):
        ServerSettings.from_env(EnvReader({"INVENTORY_TLS_CERT_FILE": "a.crt"}, "INVENTORY"), ServerSettings())
    with pytest.raises(SettingsError, match="TLS_CLIENT_CA_FILE"):
        ServerSettings.from_env(EnvReader({"CRM_TLS_CLIENT_CA_FILE": "ca.crt"}, "CRM"), ServerSettings())
    with pytest.raises(SettingsError, match="INVENTORY_TLS_CA_FILE"):
        CrmSettings.from_env({"CRM_INVENTORY_TLS_CERT_FILE": "c.crt", "CRM_INVENTORY_TLS_KEY_FILE": "c.key"})
