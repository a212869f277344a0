"""What a platform team watches: Prometheus metrics on their own HTTP port and one JSON
access-log line per call. Metrics live in a registry the server owns (none is made at
import), so that two servers in one process never mix their counts."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import grpc
from grpc_interceptor.server import ServerInterceptor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from servicekit.call_context import current_call

log = logging.getLogger(__name__)
access_log = logging.getLogger("access")

# Milliseconds to seconds: the range a unary call of these services falls in, plus a long tail.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEADLINE_SLACK_S = 0.1


def split_method(full_method: str) -> tuple[str, str]:
    """"/inventory.v1.ItemService/GetItem" -> ("inventory.v1.ItemService", "GetItem")."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


class ServerMetrics:
    """The metrics of one gRPC server, named as grpc-ecosystem's go-grpc-prometheus names them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("grpc_service", "grpc_method")
        self.handled = Counter(
            "grpc_server_handled", "Calls completed on the server, by status code.",
            (*labels, "grpc_code"), registry=self.registry,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds", "Time from receiving a call to its status.",
            labels, buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        # livesum: with several worker processes (PROMETHEUS_MULTIPROC_DIR) the live ones add up.
        self.in_flight = Gauge(
            "grpc_server_in_flight", "Calls being served now (streams included).",
            labels, registry=self.registry, multiprocess_mode="livesum",
        )
        self.client_handled = Counter(
            "grpc_client_handled", "Calls this server made to other services, by status code.",
            (*labels, "grpc_code"), registry=self.registry,
        )



@contextmanager
def metrics_served(address: str, registry: CollectorRegistry) -> Iterator[int | None]:
    """Serves /metrics at host:port (port 0 picks a free one; "off" serves nothing) in a
    daemon thread while the block runs, and yields the port."""
    if address == "off":
        yield None
        return
    host, _, port = address.rpartition(":")
    http_server, thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry)
    bound_port = http_server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound_port, extra={"metrics_port": bound_port})
    try:
        yield bound_port
    finally:
        http_server.shutdown()
        http_server.server_close()
        thread.join(timeout=5)


class ObservabilityInterceptor(ServerInterceptor):
    """Counts, times and logs every call with its final status. It sits inside
    CallContextInterceptor (for the request id) and outside the status mapping (to see
    the status the client gets)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        # The labelled series of each method, looked up once: labels() costs more than inc().
        self._series: dict[tuple[Any, ...], Any] = {}

    def _labelled(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def intercept(
        self, method: Callable[..., Any], request_or_iterator: Any,
        context: grpc.ServicerContext, method_name: str,
    ) -> Any:
        labels = split_method(method_name)
        in_flight = self._labelled(self._metrics.in_flight, *labels)
        in_flight.inc()
        started = time.perf_counter()
        try:
            result = method(request_or_iterator, context)
        except BaseException:
            self._finish(method_name, labels, context, started, default_code=grpc.StatusCode.UNKNOWN)
            in_flight.dec()
            raise
        if isinstance(result, Iterator):
            return self._observe_stream(result, method_name, labels, context, started)
        self._finish(method_name, labels, context, started, default_code=grpc.StatusCode.OK)
        in_flight.dec()
        return result

    def _observe_stream(
        self, stream: Iterator[Any], method_name: str, labels: tuple[str, str],
        context: grpc.ServicerContext, started: float,
    ) -> Iterator[Any]:
        default_code = grpc.StatusCode.CANCELLED  # closed before its end: the client went away
        try:
            yield from stream
            default_code = grpc.StatusCode.OK
        except GeneratorExit:
            raise
        except BaseException:
            default_code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self._finish(method_name, labels, context, started, default_code)
            self._labelled(self._metrics.in_flight, *labels).dec()

    def _finish(
        self, method_name: str, labels: tuple[str, str], context: grpc.ServicerContext,
        started: float, default_code: grpc.StatusCode,
    ) -> None:
        elapsed = time.perf_counter() - started
        # The status set by abort() or set_code(); none set means it ended as `default_code`,
        # unless the call is over already: then the client gave up or its deadline passed.
        status = context.code()
        if status is None and not context.is_active():
            # The client's deadline runs out a moment before the server's copy of it (taken
            # when the call arrived), so a client cutting the call at its deadline leaves a
            # little time here: that is still the deadline, not a cancellation.
            timed_out = context.time_remaining() <= DEADLINE_SLACK_S
            status = grpc.StatusCode.DEADLINE_EXCEEDED if timed_out else grpc.StatusCode.CANCELLED
        code = (status or default_code).name
        self._labelled(self._metrics.handled, *labels, code).inc()
        self._labelled(self._metrics.latency, *labels).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            call = current_call.get(None)
            access_log.info("%s %s", method_name, code, extra={
                "grpc_method": method_name,
                "grpc_code": code,
                "duration_ms": round(elapsed * 1000, 3),
                "subject": call.subject if call else "",
            })


class ClientMetricsInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts the unary calls a service makes to another, by the status they ended with."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._handled = metrics.client_handled

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        outcome = continuation(details, request)
        self._handled.labels(*split_method(details.method), outcome.code().name).inc()
        return outcome
