"""OpenTelemetry tracing for proxied calls: a SERVER span per call and a CLIENT child span for the upstream call.

Configured only from the standard `OTEL_*` variables (passed in, never read at import):
- `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: off.
- `OTEL_TRACES_EXPORTER=otlp|console`: on with that exporter.
- unset exporter: on (OTLP over HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, else off.
Off means the proxies skip every tracing call (one attribute check per request) and `traceparent` headers pass
through untouched like any other header. Telemetry never raises into the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)
_PROPAGATOR = TraceContextTextMapPropagator()
INSTRUMENTATION = "sidecar"


class Tracing:
    """Facade used by the proxies. `enabled` False makes every method unnecessary; callers check it first."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer(INSTRUMENTATION) if provider is not None else None

    def server_span(self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Span:
        """Start the SERVER span, continuing the W3C trace context found in `carrier` (lower-case keys)."""
        assert self._tracer is not None
        context = _PROPAGATOR.extract(carrier)
        return self._tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)

    def client_span(self, parent: Span, name: str, attributes: Mapping[str, Any]) -> tuple[Span, dict[str, str]]:
        """Start the CLIENT child span; returns it with the `traceparent`/`tracestate` headers to send upstream."""
        assert self._tracer is not None
        context = trace.set_span_in_context(parent)
        span = self._tracer.start_span(name, context=context, kind=SpanKind.CLIENT, attributes=attributes)
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
        return span, headers

    @staticmethod
    def finish(span: Span, attributes: Mapping[str, Any], error: str | None = None) -> None:
        try:
            span.set_attributes(attributes)
            if error:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        except Exception:  # pragma: no cover - telemetry must never break a request
            log.debug("span finish failed", exc_info=True)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def disabled() -> Tracing:
    return Tracing(None)


def with_processor(processor: SpanProcessor, service_name: str = "tfs-sidecar") -> Tracing:
    """Tracing that sends spans to the given processor (tests use an in-memory exporter)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    return Tracing(provider)


def from_environment(environ: Mapping[str, str]) -> Tracing:
    """Build tracing from OTEL_* variables; an unusable value stops start-up with a one-line ValueError."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return disabled()
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    has_endpoint = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if exporter_name == "none" or (not exporter_name and not has_endpoint):
        return disabled()
    exporter = _exporter(exporter_name or "otlp", environ)
    service = environ.get("OTEL_SERVICE_NAME") or "tfs-sidecar"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} (use otlp, console or none)")
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL: grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                             "install it or use http/protobuf") from None
        return GrpcExporter()  # type: ignore[no-any-return]
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol {protocol!r}")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
