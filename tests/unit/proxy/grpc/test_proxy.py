"""GrpcProxy between a real grpc.aio client and a scriptable grpc.aio upstream on loopback; one specification
that both engines meet (every test runs with the h2 relay and with the grpc.aio engine).

The upstream answers `b"echo:" + request`, sends initial and trailing metadata (text and binary), and follows
`x-test-*` request metadata: `x-test-code`/`x-test-details` answer with that status, `x-test-sleep` waits,
`x-test-size` answers that many bytes. `/test.Streams/*` methods are bidirectional streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.messages.records import CaptureRecord
from sidecar.proxy.grpc.engine import GrpcProxy
from sidecar.proxy.grpc.target import grpc_target
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.health import UpstreamHealth, h2_probe
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing, disabled, with_processor
from tests.support.helpers import eventually, free_port
from tests.support.rest_upstreams import ScriptedUpstream

_ProxySettings = ProxySettings  # what the `engine` fixture wraps
PREDICT = "/tensorflow.serving.PredictionService/Predict"
STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
INFER = "/inference.GRPCInferenceService/ModelInfer"
CHAT = "/test.Streams/Chat"
PREDICT_M = b"\x0a\x0b\x0a\x01m\x12\x02\x08\x03\x1a\x02sd"  # PredictRequest {model_spec {name "m" version 3 ...}}
INFER_M = b"\x0a\x02v2\x12\x011"  # ModelInferRequest {model_name "v2" model_version "1"}
BIG = 64 * 1024 * 1024
BIG_OPTIONS = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)]
UPSTREAM_INITIAL = (("x-upstream", "yes"), ("x-upstream-bin", b"\x00\x01"))
UPSTREAM_TRAILING = (("x-trailer", "t"), ("x-trailer-bin", b"\xfe\xff"))
ERROR_TRAILING = (("x-error", "e"), ("x-error-bin", b"\x01"))
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"


@dataclass
class Seen:
    method: str
    request: bytes
    metadata: dict[str, Any]
    time_remaining: float | None


@dataclass
class Upstream:
    """A model-server stand-in recording what reached it."""

    port: int = 0
    calls: list[Seen] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    server: grpc.aio.Server | None = None

    async def start(self) -> None:
        upstream = self

        class Handler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                method = details.method
                if method.startswith("/test.Streams/"):
                    return grpc.stream_stream_rpc_method_handler(functools.partial(upstream.chat, method))
                return grpc.unary_unary_rpc_method_handler(functools.partial(upstream.unary, method))

        self.server = grpc.aio.server(options=BIG_OPTIONS)
        self.server.add_generic_rpc_handlers((Handler(),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    def _seen(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        metadata = dict(context.invocation_metadata())
        self.calls.append(Seen(method, request, metadata, context.time_remaining()))
        return metadata

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = self._seen(method, request, context)
        await context.send_initial_metadata(UPSTREAM_INITIAL)
        context.set_trailing_metadata(UPSTREAM_TRAILING)
        if "x-test-sleep" in metadata:
            try:
                await asyncio.sleep(float(metadata["x-test-sleep"]))
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if "x-test-code" in metadata:
            await context.abort(grpc.StatusCode[metadata["x-test-code"]], metadata.get("x-test-details", ""),
                                ERROR_TRAILING)
        if "x-test-size" in metadata:
            return b"r" * int(metadata["x-test-size"])
        return b"echo:" + request

    async def chat(self, method: str, requests: AsyncIterator[bytes],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata = self._seen(method, b"", context)
        await context.send_initial_metadata((("x-upstream", "stream"),))
        async for message in requests:
            yield b"re:" + message
        context.set_trailing_metadata((("x-stream-trailer", "done"),))
        if "x-test-code" in metadata:
            await context.abort(grpc.StatusCode[metadata["x-test-code"]], metadata.get("x-test-details", ""))


@dataclass
class Proxied:
    proxy: GrpcProxy
    channel: grpc.aio.Channel
    metrics: RequestMetrics
    records: list[CaptureRecord]

    def unary(self, path: str = PREDICT) -> Any:
        return self.channel.unary_unary(path)


@pytest.fixture(autouse=True, params=["h2", "aio"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every proxy this module builds uses the engine of the test's parameter."""
    monkeypatch.setitem(globals(), "ProxySettings", functools.partial(_ProxySettings, grpc_engine=request.param))
    return str(request.param)


@contextlib.asynccontextmanager
async def running_proxy(upstream_port: int, *, tracing: Tracing | None = None, health: UpstreamHealth | None = None,
                        capture: Callable[[CaptureRecord], None] | None = None,
                        **settings: Any) -> AsyncIterator[Proxied]:
    metrics = RequestMetrics()
    records: list[CaptureRecord] = []
    proxy = GrpcProxy(ProxySettings(upstream_grpc=("127.0.0.1", upstream_port), listen_grpc=("127.0.0.1", 0),
                                    **settings),
                      capture=capture or records.append, metrics=metrics, tracing=tracing or disabled(),
                      health=health)
    await proxy.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}", options=BIG_OPTIONS)
    try:
        yield Proxied(proxy, channel, metrics, records)
    finally:
        await channel.close()
        await proxy.stop(grace=1.0)


@pytest.fixture
async def proxied(upstream: Upstream) -> AsyncIterator[Proxied]:
    async with running_proxy(upstream.port) as running:
        yield running


async def rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


# --- bytes and metadata ---------------------------------------------------------------------------------------

async def test_request_and_response_bytes_pass_unchanged(proxied: Proxied, upstream: Upstream) -> None:
    payload = bytes(range(256)) * 4
    assert await proxied.unary()(payload) == b"echo:" + payload
    assert upstream.calls[0].request == payload
    assert upstream.calls[0].method == PREDICT


async def test_concurrent_calls_keep_their_own_answers(proxied: Proxied) -> None:
    payloads = [f"call-{index}".encode() for index in range(50)]
    answers = await asyncio.gather(*(proxied.unary()(payload) for payload in payloads))
    assert answers == [b"echo:" + payload for payload in payloads]


async def test_custom_and_binary_request_metadata_reach_the_upstream(upstream: Upstream) -> None:
    async with running_proxy(upstream.port) as proxied:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxied.proxy.port}",
                                            options=[("grpc.primary_user_agent", "test-client/9")])
        try:
            await channel.unary_unary(PREDICT)(b"x", metadata=(("x-tenant", "blue"), ("x-blob-bin", b"\x00\xff")))
        finally:
            await channel.close()
    seen = upstream.calls[0].metadata
    assert seen["x-tenant"] == "blue"
    assert seen["x-blob-bin"] == b"\x00\xff"
    assert "test-client/9" not in seen.get("user-agent", "")  # gRPC writes its own user-agent upstream


async def test_upstream_initial_and_trailing_metadata_come_back_with_a_prediction_id(proxied: Proxied) -> None:
    call = proxied.unary()(b"x")
    await call
    initial = list(await call.initial_metadata())
    assert initial[:2] == list(UPSTREAM_INITIAL)
    assert [key for key, _ in initial].count("x-prediction-id") == 1
    assert tuple(await call.trailing_metadata()) == UPSTREAM_TRAILING


async def test_calls_that_make_no_prediction_get_no_prediction_id(proxied: Proxied) -> None:
    call = proxied.unary(STATUS)(PREDICT_M)
    await call
    assert "x-prediction-id" not in [key for key, _ in await call.initial_metadata()]


@pytest.mark.parametrize(("metadata", "expected"), [
    ((("x-prediction-id", "client-chosen"),), "client-chosen"),
    ((("x-request-id", "req-7"),), "req-7"),
    ((("x-request-id", "req-7"), ("x-prediction-id", "pred-7")), "pred-7"),
    ((("x-prediction-id", " padded "), ("x-request-id", "req-8")), "req-8"),
    ((("x-prediction-id", "x" * 129),), None),
    ((), None),
], ids=["prediction-id", "request-id", "prediction-id-wins", "invalid-falls-through", "too-long", "none"])
async def test_prediction_id_honours_the_client_or_is_minted(proxied: Proxied, metadata: tuple[tuple[str, str], ...],
                                                            expected: str | None) -> None:
    call = proxied.unary()(b"x", metadata=metadata)
    await call
    returned = dict(await call.initial_metadata())["x-prediction-id"]
    if expected is None:
        assert len(returned) == 36 and returned[14] == "7"  # a minted UUIDv7-shaped id
    else:
        assert returned == expected


async def test_minted_ids_differ_per_call(proxied: Proxied) -> None:
    ids = set()
    for _ in range(5):
        call = proxied.unary()(b"x")
        await call
        ids.add(dict(await call.initial_metadata())["x-prediction-id"])
    assert len(ids) == 5


# --- statuses, deadlines, failures ----------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "details"), [
    ("NOT_FOUND", "Servable not found for request: Latest(nope)"),
    ("INVALID_ARGUMENT", "input tensor alias not found in signature: extra"),
    ("FAILED_PRECONDITION", "Serving signature key \"nope\" not found."),
    ("RESOURCE_EXHAUSTED", "too many requests"),
    ("UNAVAILABLE", "the model server says it is overloaded"),
])
async def test_upstream_error_statuses_pass_through_with_details_and_trailers(
        proxied: Proxied, code: str, details: str) -> None:
    error = await rpc_error(proxied.unary()(b"x", metadata=(("x-test-code", code), ("x-test-details", details))))
    assert error.code() is grpc.StatusCode[code]
    assert error.details() == details
    assert tuple(error.trailing_metadata()) == ERROR_TRAILING
    initial = dict(error.initial_metadata())
    assert initial["x-upstream"] == "yes" and "x-prediction-id" in initial


async def test_client_deadline_reaches_the_upstream(proxied: Proxied, upstream: Upstream) -> None:
    await proxied.unary()(b"x", timeout=7.0)
    remaining = upstream.calls[0].time_remaining
    assert remaining is not None and 5.0 < remaining < 7.1  # grpc-timeout is rounded up on the wire


async def test_without_a_client_deadline_the_upstream_gets_the_configured_timeout(upstream: Upstream) -> None:
    async with running_proxy(upstream.port, upstream_timeout=12.0) as proxied:
        await proxied.unary()(b"x")
    remaining = upstream.calls[0].time_remaining
    assert remaining is not None and 10.0 < remaining < 12.1


async def test_expired_client_deadline_is_deadline_exceeded_and_stops_the_upstream_call(
        proxied: Proxied, upstream: Upstream) -> None:
    error = await rpc_error(proxied.unary()(b"x", timeout=0.3, metadata=(("x-test-sleep", "30"),)))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(upstream.cancelled.wait(), 10)
    await eventually(lambda: ("", "", "grpc", "predict", "DEADLINE_EXCEEDED") in proxied.metrics.requests, timeout=10.0)
    assert proxied.metrics.upstream_errors == {("grpc", "deadline"): 1}


async def test_sidecar_timeout_without_client_deadline_explains_itself(upstream: Upstream) -> None:
    async with running_proxy(upstream.port, upstream_timeout=0.3) as proxied:
        error = await rpc_error(proxied.unary()(b"x", metadata=(("x-test-sleep", "30"),)))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == f"sidecar: upstream model server 127.0.0.1:{upstream.port} did not answer within 0.3 s"


async def test_client_cancellation_cancels_the_upstream_call(proxied: Proxied, upstream: Upstream) -> None:
    call = proxied.unary()(b"x", metadata=(("x-test-sleep", "30"),))
    await eventually(lambda: len(upstream.calls) == 1, timeout=10.0)
    call.cancel()
    await asyncio.wait_for(upstream.cancelled.wait(), 10)
    await eventually(lambda: ("", "", "grpc", "predict", "CANCELLED") in proxied.metrics.requests, timeout=10.0)


async def test_upstream_down_is_unavailable_with_clear_details_and_no_hang() -> None:
    port = free_port()
    health = UpstreamHealth({"grpc": lambda: h2_probe("127.0.0.1", port)}, interval=60)
    health.state["grpc"] = True
    async with running_proxy(port, health=health) as proxied:
        started = time.monotonic()
        error = await rpc_error(proxied.unary()(PREDICT_M, timeout=20))
        assert time.monotonic() - started < 10  # failed fast, well before the client's deadline
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error.details().startswith(f"sidecar: upstream model server 127.0.0.1:{port} is unavailable: ")
        assert "x-prediction-id" in dict(error.initial_metadata())
        assert proxied.metrics.upstream_errors == {("grpc", "unavailable"): 1}
        assert proxied.metrics.requests == {("m", "3", "grpc", "predict", "UNAVAILABLE"): 1}
        assert health.state["grpc"] is False
        assert [record.status for record in proxied.records] == [grpc.StatusCode.UNAVAILABLE.value[0]]


async def test_calls_succeed_again_soon_after_the_upstream_comes_back() -> None:
    port = free_port()
    async with running_proxy(port) as proxied:
        error = await rpc_error(proxied.unary()(b"x", timeout=10))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        server = Upstream(port=port)
        await server.start()
        try:
            async def answered() -> bool:
                try:
                    return bool(await proxied.unary()(b"back", timeout=5) == b"echo:back")
                except grpc.aio.AioRpcError:
                    return False

            deadline = time.monotonic() + 10  # reconnect backoff is capped at 2 s
            while not await answered():
                assert time.monotonic() < deadline, "the proxy did not reconnect"
                await asyncio.sleep(0.1)
        finally:
            await server.stop()


async def test_health_is_marked_up_when_the_upstream_answers(upstream: Upstream) -> None:
    health = UpstreamHealth({"grpc": lambda: h2_probe("127.0.0.1", upstream.port)}, interval=60)
    assert health.state["grpc"] is False
    async with running_proxy(upstream.port, health=health) as proxied:
        await rpc_error(proxied.unary()(b"x", metadata=(("x-test-code", "NOT_FOUND"),)))
    assert health.state["grpc"] is True


# --- message sizes --------------------------------------------------------------------------------------------

async def test_ten_mebibyte_messages_pass_both_ways(proxied: Proxied, upstream: Upstream) -> None:
    request = b"q" * (10 * 1024 * 1024)
    assert await proxied.unary()(request) == b"echo:" + request
    size = 10 * 1024 * 1024 + 3
    assert len(await proxied.unary()(b"x", metadata=(("x-test-size", str(size)),))) == size


async def test_messages_over_the_configured_limit_are_refused(upstream: Upstream) -> None:
    limit = 4 * 1024 * 1024
    async with running_proxy(upstream.port, grpc_max_message_bytes=limit) as proxied:
        error = await rpc_error(proxied.unary()(b"q" * (limit + 1)))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        error = await rpc_error(proxied.unary()(b"x", metadata=(("x-test-size", str(limit + 1)),)))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await proxied.unary()(b"q" * (limit - 100)) == b"echo:" + b"q" * (limit - 100)
    assert [call.request[:1] for call in upstream.calls] == [b"x", b"q"]  # the refused request never went upstream


# --- metrics and capture --------------------------------------------------------------------------------------

async def test_metrics_record_each_call_once_with_model_version_method_and_code(proxied: Proxied) -> None:
    for _ in range(3):
        await proxied.unary()(PREDICT_M)
    await rpc_error(proxied.unary()(PREDICT_M, metadata=(("x-test-code", "NOT_FOUND"),)))
    await proxied.unary(STATUS)(PREDICT_M)
    await proxied.unary(INFER)(INFER_M)
    assert proxied.metrics.requests == {
        ("m", "3", "grpc", "predict", "OK"): 3,
        ("m", "3", "grpc", "predict", "NOT_FOUND"): 1,
        ("m", "3", "grpc", "status", "OK"): 1,
        ("v2", "1", "grpc", "infer", "OK"): 1,
    }
    predict_durations = proxied.metrics.duration.series[("m", "3", "grpc", "predict")]
    assert sum(predict_durations[:-1]) == 4
    upstream_durations = proxied.metrics.upstream.series[("m", "3", "grpc", "predict")]
    assert sum(upstream_durations[:-1]) == 4
    request_sizes = proxied.metrics.request_size.series[("m", "3", "grpc", "predict")]
    assert request_sizes[-1] == 4 * len(PREDICT_M)
    response_sizes = proxied.metrics.response_size.series[("m", "3", "grpc", "predict")]
    assert response_sizes[-1] == 3 * len(b"echo:" + PREDICT_M)
    assert proxied.metrics.upstream_errors == {}


async def test_capture_records_predict_and_infer_exchanges(proxied: Proxied) -> None:
    before = time.time()
    call = proxied.unary()(PREDICT_M, metadata=(("x-prediction-id", "p-1"),))
    await call
    await proxied.unary(INFER)(INFER_M, metadata=(("x-request-id", "r-2"),))
    await rpc_error(proxied.unary()(PREDICT_M, metadata=(("x-test-code", "INVALID_ARGUMENT"),)))
    await proxied.unary(STATUS)(PREDICT_M)  # status calls are not captured
    predict, infer, failed = proxied.records
    assert predict._replace(time=0.0, latency=0.0) == CaptureRecord(
        "p-1", 0.0, "m", "3", "", "grpc", "tfserving", "predict", PREDICT_M, b"echo:" + PREDICT_M, 0, 0.0)
    assert before <= predict.time <= time.time()
    assert 0 < predict.latency < 10
    assert (infer.prediction_id, infer.model, infer.version, infer.api, infer.method, infer.response) == (
        "r-2", "v2", "1", "v2", "infer", b"echo:" + INFER_M)
    assert (failed.status, failed.response, failed.ok) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], b"", False)


async def test_the_payload_log_opt_out_metadata_marks_the_record(proxied: Proxied) -> None:
    await proxied.unary()(PREDICT_M, metadata=(("x-sidecar-log", "off"),))
    await proxied.unary()(PREDICT_M, metadata=(("x-sidecar-log", "on"),))
    await proxied.unary()(PREDICT_M)
    assert [record.log_opt_out for record in proxied.records] == [True, False, False]


async def test_a_failing_capture_does_not_fail_the_call(upstream: Upstream) -> None:
    def broken(record: CaptureRecord) -> None:
        raise RuntimeError("sink down")

    async with running_proxy(upstream.port, capture=broken) as proxied:
        assert await proxied.unary()(PREDICT_M) == b"echo:" + PREDICT_M
        assert proxied.metrics.requests == {("m", "3", "grpc", "predict", "OK"): 1}


# --- tracing --------------------------------------------------------------------------------------------------

@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_spans_continue_the_client_trace_and_the_upstream_sees_the_client_span(
        upstream: Upstream, spans: InMemorySpanExporter) -> None:
    async with running_proxy(upstream.port, tracing=with_processor(SimpleSpanProcessor(spans))) as proxied:
        call = proxied.unary()(PREDICT_M, metadata=(("traceparent", TRACEPARENT), ("tracestate", "vendor=1"),
                                                     ("x-prediction-id", "p-9")))
        await call
    client, server = _by_kind(spans.get_finished_spans())
    assert server.context.trace_id == TRACE_ID and client.context.trace_id == TRACE_ID
    assert server.parent is not None and server.parent.span_id == CLIENT_SPAN_ID
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    sent = upstream.calls[0].metadata
    assert sent["traceparent"] == f"00-{TRACE_ID:032x}-{client.context.span_id:016x}-01"
    assert sent["tracestate"] == "vendor=1"
    assert server.name == "tensorflow.serving.PredictionService/Predict"
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc", "rpc.service": "tensorflow.serving.PredictionService", "rpc.method": "Predict",
        "sidecar.protocol": "grpc", "sidecar.method": "predict", "sidecar.prediction_id": "p-9",
        "sidecar.model": "m", "sidecar.model_version": "3", "rpc.grpc.status_code": 0}
    assert server.status.status_code is StatusCode.UNSET and client.status.status_code is StatusCode.UNSET


async def test_a_new_trace_starts_when_the_client_sends_none(upstream: Upstream,
                                                             spans: InMemorySpanExporter) -> None:
    async with running_proxy(upstream.port, tracing=with_processor(SimpleSpanProcessor(spans))) as proxied:
        await proxied.unary()(b"x")
    client, server = _by_kind(spans.get_finished_spans())
    assert server.parent is None and client.parent is not None
    assert upstream.calls[0].metadata["traceparent"].split("-")[1] == f"{server.context.trace_id:032x}"


@pytest.mark.parametrize(("code", "server_error"), [("NOT_FOUND", False), ("UNAVAILABLE", True)])
async def test_failed_calls_mark_spans_by_the_rpc_conventions(upstream: Upstream, spans: InMemorySpanExporter,
                                                              code: str, server_error: bool) -> None:
    async with running_proxy(upstream.port, tracing=with_processor(SimpleSpanProcessor(spans))) as proxied:
        await rpc_error(proxied.unary()(b"x", metadata=(("x-test-code", code),)))
    client, server = _by_kind(spans.get_finished_spans())
    assert client.status.status_code is StatusCode.ERROR
    assert (server.status.status_code is StatusCode.ERROR) is server_error
    assert (server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode[code].value[0]


async def test_without_tracing_traceparent_passes_untouched(proxied: Proxied, upstream: Upstream) -> None:
    await proxied.unary()(b"x", metadata=(("traceparent", TRACEPARENT),))
    assert upstream.calls[0].metadata["traceparent"] == TRACEPARENT


def _by_kind(finished: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, ReadableSpan]:
    kinds = {span.kind: span for span in finished}
    assert len(finished) == 2 and set(kinds) == {SpanKind.CLIENT, SpanKind.SERVER}
    return kinds[SpanKind.CLIENT], kinds[SpanKind.SERVER]


# --- other methods and streams --------------------------------------------------------------------------------

async def test_unknown_methods_are_forwarded_under_the_other_label(proxied: Proxied, upstream: Upstream) -> None:
    assert await proxied.unary("/grpc.health.v1.Health/Check")(b"ping") == b"echo:ping"
    assert upstream.calls[0].method == "/grpc.health.v1.Health/Check"
    await eventually(lambda: proxied.metrics.requests == {("", "", "grpc", "other", "OK"): 1}, timeout=10.0)
    assert proxied.records == []


async def test_bidirectional_streams_are_relayed_in_order_with_metadata(proxied: Proxied) -> None:
    call = proxied.channel.stream_stream(CHAT)(iter([b"a", b"bb", b"ccc"]), metadata=(("x-tenant", "t"),))
    assert [message async for message in call] == [b"re:a", b"re:bb", b"re:ccc"]
    initial = dict(await call.initial_metadata())
    assert initial["x-upstream"] == "stream" and "x-prediction-id" not in initial  # not captured: nothing to join
    assert dict(await call.trailing_metadata()) == {"x-stream-trailer": "done"}
    await eventually(lambda: bool(proxied.metrics.requests), timeout=10.0)
    assert proxied.metrics.requests == {("", "", "grpc", "other", "OK"): 1}
    assert proxied.metrics.request_size.series[("", "", "grpc", "other")][-1] == 6
    assert proxied.metrics.response_size.series[("", "", "grpc", "other")][-1] == 15


async def test_streams_keep_the_client_deadline_and_get_none_without_one(proxied: Proxied,
                                                                         upstream: Upstream) -> None:
    assert [m async for m in proxied.channel.stream_stream(CHAT)(iter([b"a"]))] == [b"re:a"]
    assert [m async for m in proxied.channel.stream_stream(CHAT)(iter([b"a"]), timeout=9)] == [b"re:a"]
    without, with_deadline = (call.time_remaining for call in upstream.calls)
    assert without is None  # a long-lived stream is not cut by the unary upstream_timeout
    assert with_deadline is not None and 7 < with_deadline < 9.1


async def test_stream_errors_pass_through(proxied: Proxied) -> None:
    call = proxied.channel.stream_stream(CHAT)(iter([b"a"]), metadata=(("x-test-code", "ABORTED"),
                                                                        ("x-test-details", "stop")))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for message in call:
            received.append(message)
    assert received == [b"re:a"]
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.ABORTED, "stop")


async def test_streams_to_a_down_upstream_are_unavailable() -> None:
    async with running_proxy(free_port()) as proxied:
        call = proxied.channel.stream_stream(CHAT)(iter([b"a"]), timeout=20)
        error = await rpc_error(call.read())
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert error.details().startswith("sidecar: upstream model server")


# --- lifecycle ------------------------------------------------------------------------------------------------

async def test_a_taken_port_is_an_oserror(proxied: Proxied, upstream: Upstream) -> None:
    assert proxied.proxy.port
    second = GrpcProxy(ProxySettings(upstream_grpc=("127.0.0.1", upstream.port),
                                     listen_grpc=("127.0.0.1", proxied.proxy.port)),
                       capture=None, metrics=RequestMetrics(), tracing=disabled())
    with pytest.raises(OSError, match=r"cannot listen for gRPC on 127\.0\.0\.1:"):
        await second.start()


async def test_stop_twice_is_harmless_and_the_port_closes(upstream: Upstream) -> None:
    proxy = GrpcProxy(ProxySettings(upstream_grpc=("127.0.0.1", upstream.port), listen_grpc=("127.0.0.1", 0)),
                      capture=None, metrics=RequestMetrics(), tracing=disabled())
    await proxy.start()
    with pytest.raises(RuntimeError):
        await proxy.start()
    port = proxy.port
    await proxy.stop(grace=0.5)
    await proxy.stop()
    assert port is not None and not await probe_quietly(port)


def test_both_addresses_are_required() -> None:
    with pytest.raises(ValueError, match="listen_grpc and upstream_grpc"):
        GrpcProxy(ProxySettings(listen_grpc=None), capture=None, metrics=RequestMetrics(), tracing=disabled())


async def probe_quietly(port: int) -> bool:
    """The readiness probe, with a refused connection read as not ready (as `UpstreamHealth` reads it)."""
    try:
        return await h2_probe("127.0.0.1", port, timeout=0.5)
    except OSError:
        return False


async def test_probe_is_true_for_a_grpc_server_and_false_for_a_closed_port_or_http1(upstream: Upstream) -> None:
    assert await h2_probe("127.0.0.1", upstream.port) is True
    assert await probe_quietly(free_port()) is False
    async with ScriptedUpstream() as http1:  # an HTTP/1.1 server answers the preface with a 400, not SETTINGS
        assert await h2_probe("127.0.0.1", http1.port) is False


def test_targets_are_formatted_for_grpc() -> None:
    assert grpc_target(("127.0.0.1", 8500)) == "127.0.0.1:8500"
    assert grpc_target(("::1", 8500)) == "[::1]:8500"


async def test_the_engine_setting_picks_the_engine(engine: str, upstream: Upstream) -> None:
    from sidecar.proxy.grpc.aio.proxy import AioGrpcProxy
    from sidecar.proxy.grpc.h2.relay import H2GrpcProxy

    async with running_proxy(upstream.port) as proxied:
        assert isinstance(proxied.proxy.engine, AioGrpcProxy if engine == "aio" else H2GrpcProxy)
