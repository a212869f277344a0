"""The settings every server has, whichever service it serves: where it listens, how many
processes, its limits, its TLS, how it shuts down, logs and traces. Each service's settings hold
one, read with the service's prefix (INVENTORY_LISTEN_ADDRESS, else LISTEN_ADDRESS)."""

from __future__ import annotations

from dataclasses import dataclass, field

from servicekit.pipeline import CallLimits
from servicekit.settings import EnvReader
from servicekit.tls import ServerTls


@dataclass(frozen=True)
class ServerLimits:
    """What keeps a server answering whatever its clients do. Beyond a cap a call answers
    RESOURCE_EXHAUSTED with a google.rpc.RetryInfo; grpc-go's server options are the model."""

    # HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    max_streams_per_connection: int = 100
    # A connection is told to go away (GOAWAY) after this long, so that round-robin clients find
    # replicas added since; its calls then get `max_connection_age_grace_s` before it is closed,
    # which also ends connections whose streams never completed a request.
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 30.0
    # Keepalive enforcement: a client pinging more often than this (while no call is open) is
    # told to calm down and then disconnected.
    min_client_ping_interval_s: float = 10.0
    # The server's own pings find connections whose peer vanished without a word.
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    calls: CallLimits = field(default_factory=CallLimits)

    @classmethod
    def from_env(cls, read: EnvReader) -> ServerLimits:
        return cls(
            max_streams_per_connection=read.int(
                "MAX_STREAMS_PER_CONNECTION", cls.max_streams_per_connection, minimum=1
            ),
            max_connection_age_s=read.float("MAX_CONNECTION_AGE_S", cls.max_connection_age_s),
            max_connection_age_grace_s=read.float("MAX_CONNECTION_AGE_GRACE_S", cls.max_connection_age_grace_s),
            min_client_ping_interval_s=read.float("MIN_CLIENT_PING_INTERVAL_S", cls.min_client_ping_interval_s),
            keepalive_s=read.float("KEEPALIVE_S", cls.keepalive_s),
            keepalive_timeout_s=read.float("KEEPALIVE_TIMEOUT_S", cls.keepalive_timeout_s),
            calls=CallLimits(
                max_calls_in_flight=read.int("MAX_CALLS_IN_FLIGHT", CallLimits.max_calls_in_flight, minimum=1),
                max_calls_per_subject=read.int("MAX_CALLS_PER_SUBJECT", CallLimits.max_calls_per_subject, minimum=1),
                calls_per_subject_override=read.subject_caps("CALLS_PER_SUBJECT_OVERRIDE"),
            ),
        )

    def channel_options(self) -> list[tuple[str, int]]:
        def ms(seconds: float) -> int:
            return int(seconds * 1000)

        return [
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_s)),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", ms(self.min_client_ping_interval_s)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_time_ms", ms(self.keepalive_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
        ]


@dataclass(frozen=True)
class ServerSettings:
    """The defaults here serve a test or an embedded server (any free port, no metrics);
    each service's settings give their own ports."""

    listen_address: str = "127.0.0.1:0"
    # Prometheus /metrics over HTTP ("off" turns it off; port 0 picks a free one).
    metrics_address: str = "off"
    # Server processes sharing the port (about one core each), each with its own event loop.
    processes: int = 1
    # With processes > 1, each worker keeps its threads on one core (servicekit.workers says
    # why and when). Off by default.
    pin_cpus: bool = False
    # Let other processes listen on the same port (SO_REUSEPORT): the supervisor's workers do.
    # Off, a second copy started on a taken port fails to bind instead of sharing its calls.
    reuse_port: bool = False
    # SIGTERM: report NOT_SERVING for drain_s while still serving, so balancers move away,
    # then refuse new calls and give in-flight ones grace_s to finish.
    shutdown_drain_s: float = 0.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    # OpenTelemetry spans: none, console or otlp (OTEL_EXPORTER_OTLP_ENDPOINT says where).
    traces_exporter: str = "none"
    limits: ServerLimits = field(default_factory=ServerLimits)
    # Certificate and key files (TLS), and a client CA (mTLS); none: plaintext.
    tls: ServerTls = field(default_factory=ServerTls)

    @classmethod
    def from_env(cls, read: EnvReader, defaults: ServerSettings) -> ServerSettings:
        """Each setting from the environment, else from `defaults` (the service's own)."""
        return cls(
            listen_address=read.str("LISTEN_ADDRESS", defaults.listen_address),
            metrics_address=read.str("METRICS_ADDRESS", defaults.metrics_address),
            processes=read.int("PROCESSES", defaults.processes, minimum=1),
            pin_cpus=read.bool("PIN_CPUS", defaults.pin_cpus),
            reuse_port=read.bool("REUSE_PORT", defaults.reuse_port),
            shutdown_drain_s=read.float("SHUTDOWN_DRAIN_S", defaults.shutdown_drain_s),
            shutdown_grace_s=read.float("SHUTDOWN_GRACE_S", defaults.shutdown_grace_s),
            log_level=read.str("LOG_LEVEL", defaults.log_level),
            traces_exporter=read.str("OTEL_TRACES_EXPORTER", defaults.traces_exporter),
            limits=ServerLimits.from_env(read),
            tls=ServerTls.from_env(read),
        )

    @property
    def stop_timeout_s(self) -> float:
        """How long a worker may take to stop after SIGTERM: its drain, its grace, a margin."""
        return self.shutdown_drain_s + self.shutdown_grace_s + 5
