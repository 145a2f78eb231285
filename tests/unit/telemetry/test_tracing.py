"""Tracing follows the standard OTEL_* variables and is off unless asked for."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.telemetry import tracing


@pytest.mark.parametrize("environ", [{}, {"OTEL_TRACES_EXPORTER": "none"},
                                     {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}])
def test_tracing_is_off_without_an_exporter(environ: dict[str, str]) -> None:
    assert not tracing.from_environment(environ).enabled


@pytest.mark.parametrize("environ", [{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
                                     {"OTEL_TRACES_EXPORTER": "console"}])
def test_tracing_is_on_with_an_endpoint_or_exporter(environ: dict[str, str]) -> None:
    traced = tracing.from_environment(environ)
    assert traced.enabled
    traced.shutdown()


def test_unsupported_exporter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER: unsupported exporter 'zipkin'"):
        tracing.from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_client_span_is_a_child_of_the_server_span_which_continues_the_incoming_trace() -> None:
    exporter = InMemorySpanExporter()
    traced = tracing.with_processor(SimpleSpanProcessor(exporter))
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    server = traced.server_span("POST predict", {"traceparent": incoming}, {"sidecar.model": "m"})
    client, headers = traced.client_span(server, "upstream", {})
    traced.finish(client, {})
    traced.finish(server, {"http.response.status_code": 200})
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    assert spans[SpanKind.SERVER].context.trace_id == int("0af7651916cd43dd8448eb211c80319c", 16)
    assert spans[SpanKind.SERVER].parent is not None
    assert spans[SpanKind.SERVER].parent.span_id == int("b7ad6b7169203331", 16)
    assert spans[SpanKind.CLIENT].parent is not None
    assert spans[SpanKind.CLIENT].parent.span_id == spans[SpanKind.SERVER].context.span_id
    assert headers["traceparent"] == (f"00-0af7651916cd43dd8448eb211c80319c-"
                                      f"{spans[SpanKind.CLIENT].context.span_id:016x}-01")
