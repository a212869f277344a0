"""The CRM service's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from servicekit.jwt import AuthSettings
from servicekit.server_settings import ServerSettings
from servicekit.settings import EnvReader
from servicekit.tls import ClientTls

SERVER_DEFAULTS = ServerSettings(listen_address="127.0.0.1:50052", metrics_address="127.0.0.1:9052")


@dataclass(frozen=True)
class CrmSettings:
    # Where it listens, processes, limits, shutdown, logs, metrics, traces: CRM_LISTEN_ADDRESS...
    server: ServerSettings = field(default_factory=lambda: SERVER_DEFAULTS)
    # host:port, or dns:///name:port to balance over every inventory replica (round robin).
    inventory_target: str = "127.0.0.1:50051"
    # Deadline of an inventory call when the customer set none, and the cap when they did.
    inventory_timeout_s: float = 5.0
    # TLS towards inventory (CRM_INVENTORY_TLS_CA_FILE...): its CA, and the CRM's own client
    # certificate when inventory requires mTLS. No CA file: plaintext.
    inventory_tls: ClientTls = field(default_factory=ClientTls)
    # A token file kept up to date by the platform; when empty the CRM mints its own.
    inventory_token_file: str = ""
    service_token_subject: str = "crm"
    service_token_lifetime_s: float = 900.0
    # Verifies the customers' tokens (CRM_JWT_*, else JWT_*).
    auth: AuthSettings = field(default_factory=AuthSettings)
    # Mints the CRM's own token towards inventory (CRM_INVENTORY_JWT_*, else JWT_*): inventory's
    # issuer, audience and a key it trusts. Unused when inventory_token_file is set.
    inventory_auth: AuthSettings = field(default_factory=AuthSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CrmSettings:
        read = EnvReader(env, "CRM")
        return cls(
            server=ServerSettings.from_env(read, SERVER_DEFAULTS),
            inventory_target=read.str("INVENTORY_TARGET", cls.inventory_target),
            inventory_timeout_s=read.float("INVENTORY_TIMEOUT_S", cls.inventory_timeout_s),
            inventory_tls=ClientTls.from_env(read, "INVENTORY"),
            inventory_token_file=read.str("INVENTORY_TOKEN_FILE", ""),
            service_token_subject=read.str("SERVICE_TOKEN_SUBJECT", cls.service_token_subject),
            service_token_lifetime_s=read.float("SERVICE_TOKEN_LIFETIME_S", cls.service_token_lifetime_s),
            auth=AuthSettings.from_env(env, "CRM"),
            inventory_auth=AuthSettings.from_env(env, "CRM_INVENTORY", check=False),
        )
