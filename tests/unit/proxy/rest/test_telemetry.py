"""What the proxy tells the rest of the sidecar: capture records, request metrics and trace spans."""

from __future__ import annotations

import gzip
import time

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from sidecar.capture.ring import CaptureRing
from sidecar.messages.records import CaptureRecord, as_record
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing, with_processor
from tests.support.rest_upstreams import Reply, ScriptedUpstream, exchange, json_reply, response, running_proxy

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def post(target: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: sidecar", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(target: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: sidecar", *headers]) + "\r\n\r\n").encode()


# capture ----------------------------------------------------------------------------------------------------

async def test_a_predict_exchange_is_captured_with_ids_route_bytes_status_and_latency() -> None:
    records: list[CaptureRecord] = []
    answer = b'{"predictions": [[0.9, 0.1]]}'
    request_body = b'{"instances": [[1.0, 2.0]]}'
    async with ScriptedUpstream(lambda _: Reply(response(200, answer), delay=0.05)) as upstream, \
            running_proxy(upstream.port, capture=records.append) as proxy:
        before = time.time()
        (got,) = await exchange(proxy.port, post("/v1/models/iris/versions/3:predict", request_body))
        after = time.time()
    (record,) = records
    assert record.prediction_id == got.header("X-Prediction-Id")
    assert before <= record.time <= after
    assert (record.model, record.version, record.label) == ("iris", "3", "")
    assert (record.protocol, record.api, record.method) == ("rest", "tfserving", "predict")
    assert (record.request, record.response, record.status) == (request_body, answer, 200)
    assert 0.045 <= record.latency < after - before  # the upstream waited 50 ms (loop timers are ms-granular)
    assert record.request_encoding == ""


@pytest.mark.parametrize(("target", "api", "method", "label"), [
    ("/v1/models/m/labels/canary:classify", "tfserving", "classify", "canary"),
    ("/v1/models/m:regress", "tfserving", "regress", ""),
    ("/v2/models/m/versions/1/infer", "v2", "infer", ""),
])
async def test_classify_regress_and_v2_infer_are_captured(target: str, api: str, method: str, label: str) -> None:
    records: list[CaptureRecord] = []
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, capture=records.append) as proxy:
        await exchange(proxy.port, post(target, b"{}"))
    (record,) = records
    assert (record.api, record.method, record.label) == (api, method, label)


async def test_error_answers_from_the_model_server_are_captured_with_their_status() -> None:
    records: list[CaptureRecord] = []
    error = b'{"error": "Servable not found for request: Latest(nope)"}'
    async with ScriptedUpstream(lambda _: json_reply(error, 404)) as upstream, \
            running_proxy(upstream.port, capture=records.append) as proxy:
        await exchange(proxy.port, post("/v1/models/nope:predict", b"{}"))
    assert [(r.status, r.response) for r in records] == [(404, error)]


@pytest.mark.parametrize(("header", "opted_out"), [(None, False), ("X-Sidecar-Log: off", True),
                                                  ("x-sidecar-log:  OFF ", True), ("X-Sidecar-Log: on", False)])
async def test_the_payload_log_opt_out_header_marks_the_record(header: str | None, opted_out: bool) -> None:
    records: list[CaptureRecord] = []
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, capture=records.append) as proxy:
        await exchange(proxy.port, post("/v1/models/m:predict", b"{}", *([header] if header else [])))
    assert [r.log_opt_out for r in records] == [opted_out]


async def test_a_gzip_request_is_captured_still_compressed_with_its_encoding() -> None:
    records: list[CaptureRecord] = []
    body = gzip.compress(b'{"instances": [1]}')
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, capture=records.append) as proxy:
        await exchange(proxy.port, post("/v1/models/m:predict", body, "Content-Encoding: GZip"))
        assert upstream.received[0].body == body
    assert records[0].request == body
    assert records[0].request_encoding == "gzip"


async def test_status_metadata_other_paths_and_proxy_errors_are_not_captured() -> None:
    records: list[CaptureRecord] = []
    async with ScriptedUpstream(lambda r: Reply(action="reset") if "broken" in r.target else json_reply()) \
            as upstream, running_proxy(upstream.port, capture=records.append) as proxy:
        await exchange(proxy.port, get("/v1/models/m") + get("/v1/models/m/metadata") + get("/other"), count=3)
        (got,) = await exchange(proxy.port, post("/v1/models/broken:predict", b"{}"))
        assert got.status == 502
    assert records == []


async def test_capture_goes_into_a_real_ring_in_arrival_order() -> None:
    ring = CaptureRing(max_records=100, max_bytes=1 << 20)
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, capture=ring.append) as proxy:
        await exchange(proxy.port, b"".join(post("/v1/models/m:predict", f"[{i}]".encode()) for i in range(5)), 5)
    assert [as_record(r).request for r in ring.drain(10)] == [f"[{i}]".encode() for i in range(5)]


# metrics ----------------------------------------------------------------------------------------------------

async def test_metrics_count_requests_durations_and_sizes_per_model_method_and_code() -> None:
    metrics = RequestMetrics()
    answer = b'{"predictions": [1]}'
    async with ScriptedUpstream(lambda r: json_reply(answer, 404 if "nope" in r.target else 200)) as upstream, \
            running_proxy(upstream.port, metrics=metrics) as proxy:
        requests = post("/v1/models/m:predict", b"x" * 300) * 4 + post("/v1/models/nope:predict", b"{}") \
            + get("/v1/models/m")
        await exchange(proxy.port, requests, count=6)
    assert metrics.requests == {("m", "", "rest", "predict", "200"): 4, ("nope", "", "rest", "predict", "404"): 1,
                                ("m", "", "rest", "status", "200"): 1}
    row = metrics.duration.series[("m", "", "rest", "predict")]
    assert sum(row[:-1]) == 4 and row[-1] > 0
    assert sum(metrics.upstream.series[("m", "", "rest", "predict")][:-1]) == 4
    assert metrics.request_size.series[("m", "", "rest", "predict")][-1] == 4 * 300
    assert metrics.response_size.series[("m", "", "rest", "predict")][-1] == 4 * len(answer)
    assert metrics.upstream_errors == {}


async def test_metrics_export_through_a_registry() -> None:
    metrics = RequestMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, metrics=metrics) as proxy:
        await exchange(proxy.port, post("/v1/models/m:predict", b"{}") * 3, count=3)
    labels = {"model": "m", "version": "", "protocol": "rest", "method": "predict"}
    assert registry.get_sample_value("sidecar_requests_total", {**labels, "code": "200"}) == 3
    assert registry.get_sample_value("sidecar_request_duration_seconds_count", labels) == 3


async def test_versions_and_labels_in_the_path_are_the_version_label() -> None:
    metrics = RequestMetrics()
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, metrics=metrics) as proxy:
        requests = (post("/v1/models/m/versions/1:predict", b"{}") + post("/v1/models/m/versions/2:predict", b"{}")
                    + post("/v1/models/m/labels/canary:predict", b"{}") + post("/v2/models/m/versions/7/infer", b"{}")
                    + post("/v1/models/m:predict", b"{}"))
        await exchange(proxy.port, requests, count=5)
    assert metrics.requests == {("m", "1", "rest", "predict", "200"): 1, ("m", "2", "rest", "predict", "200"): 1,
                                ("m", "canary", "rest", "predict", "200"): 1, ("m", "7", "rest", "infer", "200"): 1,
                                ("m", "", "rest", "predict", "200"): 1}
    assert set(metrics.duration.series) == {("m", version, "rest", method) for version, method in
                                            (("1", "predict"), ("2", "predict"), ("canary", "predict"),
                                             ("7", "infer"), ("", "predict"))}


# tracing ----------------------------------------------------------------------------------------------------

def traced() -> tuple[InMemorySpanExporter, Tracing]:
    exporter = InMemorySpanExporter()
    return exporter, with_processor(SimpleSpanProcessor(exporter))


async def test_a_server_span_continues_the_client_trace_and_a_client_child_span_reaches_the_upstream() -> None:
    exporter, tracing = traced()
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, tracing=tracing) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/iris/labels/stable:predict", b"{}",
                                                 f"traceparent: {TRACEPARENT}", "tracestate: vendor=1"))
        seen = upstream.received[0]
    spans: dict[SpanKind, ReadableSpan] = {span.kind: span for span in exporter.get_finished_spans()}
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert server.context is not None and client.context is not None and client.parent is not None
    assert format(server.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server.parent is not None and format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    # the upstream got the CLIENT span's context instead of the incoming one
    assert seen.header("traceparent") == (f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-01")
    assert seen.header("tracestate") == "vendor=1"
    assert [name for name, _ in seen.headers].count("traceparent") == 1
    attributes = dict(server.attributes or {})
    assert attributes == {
        "sidecar.prediction_id": got.header("X-Prediction-Id"), "sidecar.model": "iris",
        "sidecar.model_version": "stable", "sidecar.protocol": "rest", "sidecar.method": "predict",
        "http.request.method": "POST", "url.path": "/v1/models/iris/labels/stable:predict",
        "http.response.status_code": 200}
    assert dict(client.attributes or {})["http.response.status_code"] == 200


async def test_a_request_without_trace_context_starts_a_new_trace() -> None:
    exporter, tracing = traced()
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, tracing=tracing) as proxy:
        await exchange(proxy.port, get("/v1/models/m/versions/4"))
        seen = upstream.received[0]
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert server.parent is None and client.context is not None
    assert dict(server.attributes or {})["sidecar.model_version"] == "4"
    assert (seen.header("traceparent") or "").startswith(f"00-{client.context.trace_id:032x}-")


async def test_upstream_failures_mark_both_spans_as_errors() -> None:
    exporter, tracing = traced()
    async with ScriptedUpstream(lambda _: Reply(action="reset")) as upstream, \
            running_proxy(upstream.port, tracing=tracing) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict", b"{}"))
        assert got.status == 502
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert all(span.status.status_code == StatusCode.ERROR for span in spans)
    assert all(dict(span.attributes or {})["http.response.status_code"] == 502 for span in spans)


async def test_with_tracing_off_trace_headers_pass_through_untouched() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        await exchange(proxy.port, post("/v1/models/m:predict", b"{}", f"traceparent: {TRACEPARENT}",
                                        "tracestate: a=b"))
        assert upstream.received[0].header("traceparent") == TRACEPARENT
        assert upstream.received[0].header("tracestate") == "a=b"
