"""The CRM service's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from servicekit.jwt import AuthSettings
from servicekit.server import ServerLimits
from servicekit.settings import EnvReader


@dataclass(frozen=True)
class CrmSettings:
    listen_address: str = "127.0.0.1:50052"
    # host:port, or dns:///name:port to balance over every inventory replica (round robin).
    inventory_target: str = "127.0.0.1:50051"
    # Deadline of an inventory call when the customer set none, and the cap when they did.
    inventory_timeout_s: float = 5.0
    # A token file kept up to date by the platform; when empty the CRM mints its own.
    inventory_token_file: str = ""
    service_token_subject: str = "crm"
    service_token_lifetime_s: float = 900.0
    # Server processes sharing the port (about one core each), each with its own event loop.
    processes: int = 1
    # With processes > 1, each keeps its threads (the loop, the database threads) on one core: they
    # hand the GIL over there
    # instead of across cores, which costs lists about a third of their speed. Off by default:
    # only for a server whose cores are its own (a cpuset, a dedicated machine); on a shared
    # node every pod would crowd onto the same first cores.
    pin_cpus: bool = False
    shutdown_drain_s: float = 0.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    # Prometheus /metrics over HTTP ("off" turns it off; port 0 picks a free one).
    metrics_address: str = "127.0.0.1:9052"
    # OpenTelemetry spans: none, console or otlp (OTEL_EXPORTER_OTLP_ENDPOINT says where).
    traces_exporter: str = "none"
    # Verifies the customers' tokens (CRM_JWT_*, else JWT_*).
    auth: AuthSettings = field(default_factory=AuthSettings)
    # Mints the CRM's own token towards inventory (CRM_INVENTORY_JWT_*, else JWT_*): inventory's
    # issuer, audience and a key it trusts. Unused when inventory_token_file is set.
    inventory_auth: AuthSettings = field(default_factory=AuthSettings)
    limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CrmSettings:
        read = EnvReader(env, "CRM")
        return cls(
            listen_address=read.str("LISTEN_ADDRESS", cls.listen_address),
            inventory_target=read.str("INVENTORY_TARGET", cls.inventory_target),
            inventory_timeout_s=read.float("INVENTORY_TIMEOUT_S", cls.inventory_timeout_s),
            inventory_token_file=read.str("INVENTORY_TOKEN_FILE", ""),
            service_token_subject=read.str("SERVICE_TOKEN_SUBJECT", cls.service_token_subject),
            service_token_lifetime_s=read.float("SERVICE_TOKEN_LIFETIME_S", cls.service_token_lifetime_s),
            processes=read.int("PROCESSES", cls.processes, minimum=1),
            pin_cpus=read.bool("PIN_CPUS", cls.pin_cpus),
            limits=ServerLimits.from_env(read),
            shutdown_drain_s=read.float("SHUTDOWN_DRAIN_S", cls.shutdown_drain_s),
            shutdown_grace_s=read.float("SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            log_level=read.str("LOG_LEVEL", cls.log_level),
            metrics_address=read.str("METRICS_ADDRESS", cls.metrics_address),
            traces_exporter=read.str("OTEL_TRACES_EXPORTER", cls.traces_exporter),
            auth=AuthSettings.from_env(env, "CRM"),
            inventory_auth=AuthSettings.from_env(env, "CRM_INVENTORY", check=False),
        )
