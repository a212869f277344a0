"""What a platform team watches: Prometheus metrics on their own HTTP port and one JSON
access-log line per call. Metrics live in a registry the server owns (none is made at
import), so that two servers in one process never mix their counts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from servicekit.settings import BindError

log = logging.getLogger(__name__)
access_log = logging.getLogger("access")

# Milliseconds to seconds: the range a unary call of these services falls in, plus a long tail.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def split_method(full_method: str) -> tuple[str, str]:
    """ "/inventory.v1.ItemService/GetItem" -> ("inventory.v1.ItemService", "GetItem")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def rpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """go-grpc-prometheus's grpc_type label: unary, server_stream, client_stream or bidi_stream."""
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


class ServerMetrics:
    """The metrics of one gRPC server, named and labelled as grpc-ecosystem's
    go-grpc-prometheus names them (so its dashboards match), plus calls in flight."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started",
            "Calls started on the server.",
            labels,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "Calls completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving a call to its status.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        # livesum: with several worker processes (PROMETHEUS_MULTIPROC_DIR) the live ones add up.
        self.in_flight = Gauge(
            "grpc_server_in_flight",
            "Calls being served now (streams included).",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.client_started = Counter(
            "grpc_client_started",
            "Calls this server started to other services.",
            labels,
            registry=self.registry,
        )
        self.client_handled = Counter(
            "grpc_client_handled",
            "Calls this server made to other services, by status code.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.client_latency = Histogram(
            "grpc_client_handling_seconds",
            "Time from starting a call to another service to its status.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )


@contextmanager
def metrics_served(address: str, registry: CollectorRegistry) -> Iterator[int | None]:
    """Serves /metrics at host:port (port 0 picks a free one; "off" serves nothing) in a
    daemon thread while the block runs, and yields the port."""
    if address == "off":
        yield None
        return
    host, _, port = address.rpartition(":")
    try:
        http_server, thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
    except OSError as error:
        raise BindError(address) from error
    bound_port = http_server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound_port, extra={"metrics_port": bound_port})
    try:
        yield bound_port
    finally:
        http_server.shutdown()
        http_server.server_close()
        thread.join(timeout=5)


def log_call(method_name: str, code: str, elapsed_s: float, subject: str) -> None:
    """The access log's line for one call."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "%s %s",
            method_name,
            code,
            extra={
                "grpc_method": method_name,
                "grpc_code": code,
                "duration_ms": round(elapsed_s * 1000, 3),
                "subject": subject,
            },
        )


class _ClientRoute:
    """The series of one method a client calls, looked up once."""

    def __init__(self, method: str, metrics: ServerMetrics) -> None:
        self.labels = ("unary", *split_method(method))
        self.started = metrics.client_started.labels(*self.labels)
        self.latency = metrics.client_latency.labels(*self.labels)
        self._handled = metrics.client_handled
        self._handled_by_code: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        series = self._handled_by_code.get(code)
        if series is None:
            series = self._handled_by_code[code] = self._handled.labels(*self.labels, code.name)
        return series


class AsyncClientMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Counts the unary calls a service makes to another (the only kind the CRM makes), as
    they start and by the status they end with, and times them."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._routes: dict[str, _ClientRoute] = {}

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        raw_method: str | bytes = details.method  # grpc.aio hands bytes over, whatever its stubs say
        method = raw_method.decode() if isinstance(raw_method, bytes) else raw_method
        route = self._routes.get(method)
        if route is None:
            route = self._routes[method] = _ClientRoute(method, self._metrics)
        route.started.inc()
        started = time.perf_counter()
        call = await continuation(details, request)
        code = await call.code()
        route.latency.observe(time.perf_counter() - started)
        route.handled(code).inc()
        return call
