"""TLS for both ends of a channel, off unless configured: a server's certificate and key
(re-read when the files change, so a renewed certificate is served without a restart),
an optional client CA (mTLS: every client must present a certificate it signed), and a
client's CA, optional certificate and the token as call credentials, which grpc sends on
secure channels only."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from servicekit.credentials import bearer_call_credentials
from servicekit.settings import EnvReader, SettingsError

log = logging.getLogger(__name__)

# (mtime_ns, size) of each file: what says a file was rewritten.
_FileVersions = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ServerTls:
    """PEM files a server serves with; all empty: plaintext."""

    cert_file: str = ""
    key_file: str = ""
    # When set, clients must present a certificate this CA signed (mTLS).
    client_ca_file: str = ""

    @classmethod
    def from_env(cls, read: EnvReader) -> ServerTls:
        tls = cls(
            cert_file=read.str("TLS_CERT_FILE", ""),
            key_file=read.str("TLS_KEY_FILE", ""),
            client_ca_file=read.str("TLS_CLIENT_CA_FILE", ""),
        )
        if bool(tls.cert_file) != bool(tls.key_file):
            raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        if tls.client_ca_file and not tls.cert_file:
            raise SettingsError("TLS_CLIENT_CA_FILE (mTLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        return tls

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(path for path in (self.cert_file, self.key_file, self.client_ca_file) if path)


class CertificateFiles:
    """The fetcher of grpc.dynamic_ssl_server_credentials, which grpc calls before each new
    connection's handshake: a new configuration when a file changed, else None (keep the
    one in use). A half-written pair (new certificate, old key) is skipped until it matches."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._versions: _FileVersions = ()

    def _current_versions(self) -> _FileVersions:
        return tuple((stat.st_mtime_ns, stat.st_size) for stat in map(os.stat, self._tls.files))

    def load(self) -> grpc.ServerCertificateConfiguration:
        """The configuration from the files as they are now; raises OSError or ssl.SSLError."""
        versions = self._current_versions()
        # Proves the key matches the certificate before grpc is handed the pair.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self._tls.cert_file, self._tls.key_file)
        configuration = grpc.ssl_server_certificate_configuration(
            [(_read(self._tls.key_file), _read(self._tls.cert_file))],
            root_certificates=_read(self._tls.client_ca_file) if self._tls.client_ca_file else None,
        )
        self._versions = versions
        return configuration

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            if self._current_versions() == self._versions:
                return None
            configuration = self.load()
        except (OSError, ssl.SSLError) as error:
            log.warning("TLS files %s cannot be loaded, serving the previous ones: %s", self._tls.files, error)
            return None
        log.info("TLS certificate reloaded from %s", self._tls.cert_file)
        return configuration


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials that follow the files; the first load's errors are raised, at start."""
    files = CertificateFiles(tls)
    try:
        initial = files.load()
    except (OSError, ssl.SSLError) as error:
        raise SettingsError(f"TLS files {tls.files} cannot be loaded: {error}") from None
    # grpc-stubs type the fetcher without the None that keeps the configuration in use.
    fetcher: Callable[[], grpc.ServerCertificateConfiguration] = files  # type: ignore[assignment]
    return grpc.dynamic_ssl_server_credentials(initial, fetcher, require_client_authentication=bool(tls.client_ca_file))


@dataclass(frozen=True)
class ClientTls:
    """PEM files a client dials with; no CA file: plaintext."""

    # The CA that signed the server's certificate.
    ca_file: str = ""
    # This client's own certificate and key, for servers that require mTLS.
    cert_file: str = ""
    key_file: str = ""
    # The name the server's certificate is checked against, when not the target's host.
    server_name: str = ""

    @classmethod
    def from_env(cls, read: EnvReader, prefix: str) -> ClientTls:
        """PREFIX_TLS_CA_FILE, PREFIX_TLS_CERT_FILE, PREFIX_TLS_KEY_FILE, PREFIX_TLS_SERVER_NAME."""
        tls = cls(
            ca_file=read.str(f"{prefix}_TLS_CA_FILE", ""),
            cert_file=read.str(f"{prefix}_TLS_CERT_FILE", ""),
            key_file=read.str(f"{prefix}_TLS_KEY_FILE", ""),
            server_name=read.str(f"{prefix}_TLS_SERVER_NAME", ""),
        )
        tls.check(lambda name: f"{prefix}_TLS_{name}")
        return tls

    def check(self, name: Callable[[str], str]) -> None:
        """Raises SettingsError naming the settings (`name("CA_FILE")`) that do not fit."""
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingsError(f"{name('CERT_FILE')} and {name('KEY_FILE')} go together: set both or neither")
        if (self.cert_file or self.server_name) and not self.ca_file:
            raise SettingsError(f"{name('CERT_FILE')} and {name('SERVER_NAME')} need {name('CA_FILE')} (TLS)")

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The files as they are now (a channel keeps them: a renewed client certificate is
        used by channels made after it)."""
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=_read(self.ca_file),
                private_key=_read(self.key_file) if self.key_file else None,
                certificate_chain=_read(self.cert_file) if self.cert_file else None,
            )
        except OSError as error:
            raise SettingsError(f"TLS file {error.filename!r} cannot be read: {error.strerror}") from None

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def secure_channel_credentials(tls: ClientTls, token: Callable[[], str]) -> grpc.ChannelCredentials:
    """TLS with `authorization: Bearer <token()>` on every call, as call credentials: grpc
    refuses to send those on a plaintext channel, so the token never leaves in clear."""
    return grpc.composite_channel_credentials(tls.channel_credentials(), bearer_call_credentials(token))


def _read(path: str) -> bytes:
    with open(path, "rb") as pem:
        return pem.read()
