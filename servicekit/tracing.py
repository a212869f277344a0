"""OpenTelemetry tracing, off by default. OpenTelemetry is imported only when it is turned
on, so the services run without the `tracing` extra installed. While it is on, log lines
carry the trace_id and span_id of the span they were written in."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import grpc.aio

from servicekit.logging import SpanFilter, filter_added
from servicekit.settings import SettingsError

EXPORTERS = ("none", "console", "otlp")


@dataclass(frozen=True)
class Tracing:
    """The interceptors that open a span per call and carry the trace to the next service."""

    server_interceptor: grpc.aio.ServerInterceptor
    # Interceptors for a grpc.aio client channel, so that its calls carry the trace.
    aio_client_interceptors: Sequence[grpc.aio.ClientInterceptor]


@contextmanager
def tracing_started(exporter: str, service_name: str) -> Iterator[Tracing | None]:
    """`exporter` is OTEL_TRACES_EXPORTER's value: none, console (stdout), or otlp (to
    OTEL_EXPORTER_OTLP_ENDPOINT, read by the exporter itself). Spans name `service_name` as
    their service unless OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES)
    names another. Spans still buffered are sent when the block ends."""
    if exporter == "none":
        yield None
        return
    if exporter not in EXPORTERS:
        raise SettingsError(f"OTEL_TRACES_EXPORTER must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as missing:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER={exporter} needs the tracing extra: pip install 'inventory-crm[tracing]'"
        ) from missing
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    # Resource.create lets its argument win over the environment: the environment is merged
    # again on top, so that an operator's OTEL_SERVICE_NAME wins over our default.
    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))

    def current_span_ids() -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)

    try:
        # OpenTelemetry's grpc instrumentation is unannotated upstream.
        server_interceptor = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
        client_interceptors = aio_client_interceptors(tracer_provider=provider)  # type: ignore[no-untyped-call]
        with filter_added(SpanFilter(current_span_ids)):
            yield Tracing(server_interceptor, client_interceptors)
    finally:
        provider.shutdown()
