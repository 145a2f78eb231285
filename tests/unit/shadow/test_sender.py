"""The shadow sender against real HTTP servers on loopback: answers paired with the primary's for the analysis,
outcomes counted, a full queue drops the oldest, an unreachable shadow is skipped at append."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from tensorflow_serving.apis import predict_pb2

from sidecar.config import from_mapping
from sidecar.messages.records import CaptureRecord
from sidecar.shadow.sender import DOWN_AFTER, MAX_CACHED_MODELS, ShadowSender
from tests.support.helpers import eventually, free_port, metric


def call(number: int, model: str = "iris", status: int = 200) -> CaptureRecord:
    return CaptureRecord(f"id-{number}", 1.0, model, "1", "", "rest", "tfserving", "predict",
                         json.dumps({"instances": [[number, 1.0]]}).encode(), b'{"predictions": [[0.9, 0.1]]}',
                         status, 0.002)


@pytest.fixture
async def shadow_server() -> AsyncIterator[tuple[int, list[str], asyncio.Event]]:
    """A shadow answering every predict with fixed probabilities once `release` is set; the paths it was asked."""
    asked: list[str] = []
    release = asyncio.Event()
    release.set()

    async def predict(request: web.Request) -> web.Response:
        asked.append(request.path)
        await request.read()
        await release.wait()
        return web.json_response({"predictions": [[0.2, 0.8]]})

    app = web.Application()
    app.router.add_post("/{tail:.*}", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1], asked, release
    await runner.cleanup()


def outcome(registry: CollectorRegistry, name: str, shadow: str = "next") -> float:
    return metric(registry, "sidecar_shadow_requests_total", model="iris", shadow=shadow, outcome=name)


async def test_answers_go_to_the_analysis_paired_with_the_primarys(
        shadow_server: tuple[int, list[str], asyncio.Event]) -> None:
    port, asked, _ = shadow_server
    settings = from_mapping({"shadow_models": {"iris": {"rest": f"http://127.0.0.1:{port}", "version": "2",
                                                        "name": "next"}}}).shadow
    registry = CollectorRegistry()
    delivered: list[CaptureRecord] = []
    sender = ShadowSender(settings, registry, delivered.append)
    await sender.start()
    try:
        for number in range(5):
            sender.append(call(number))
        sender.append(call(5, status=503))  # mirrored, counted as the primary's error, not paired
        sender.append(call(6, model="other"))  # no shadow for this model
        await eventually(lambda: outcome(registry, "ok") == 6)
    finally:
        await sender.stop()
    assert asked == ["/v1/models/iris/versions/2:predict"] * 6
    assert [record.prediction_id for record in delivered] == [f"id-{n}" for n in range(5)]
    first = delivered[0]
    assert (first.shadow, first.response, first.primary_response) == (
        "next", b'{"predictions": [[0.2, 0.8]]}', b'{"predictions": [[0.9, 0.1]]}')
    assert metric(registry, "sidecar_shadow_primary_errors_total", model="iris", shadow="next") == 1
    assert metric(registry, "sidecar_shadow_duration_seconds_count", model="iris", shadow="next", side="shadow") == 6
    assert sender.snapshot("iris")["next"]["error_rate"] == {"shadow": 0.0, "primary": 1 / 6}


async def test_a_call_both_sides_failed_counts_as_both_failed_not_against_the_shadow() -> None:
    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": "bad input"}, status=400)

    app = web.Application()
    app.router.add_post("/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{runner.addresses[0][1]}",
                             "shadow_name": "next"}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    await sender.start()
    try:
        sender.append(call(0, status=400))  # the primary refused it too
        sender.append(call(1))  # the primary answered: the shadow's error is its own
        await eventually(lambda: outcome(registry, "both_failed") + outcome(registry, "error") == 2)
    finally:
        await sender.stop()
        await runner.cleanup()
    assert (outcome(registry, "both_failed"), outcome(registry, "error")) == (1, 1)
    assert sender.snapshot("iris")["next"]["error_rate"] == {"shadow": 0.5, "primary": 0.5}


async def test_a_full_queue_drops_the_oldest_and_counts_it(
        shadow_server: tuple[int, list[str], asyncio.Event]) -> None:
    port, _, release = shadow_server
    release.clear()  # the shadow holds every call: one in flight, the rest wait in the queue
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{port}", "shadow_name": "next",
                             "shadow_queue_max": 3, "shadow_concurrency": 1}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    await sender.start()
    try:
        sender.append(call(0))
        await asyncio.sleep(0.05)  # the first is in flight
        for number in range(1, 8):
            sender.append(call(number))
        assert outcome(registry, "dropped") == 4
        release.set()
        await eventually(lambda: outcome(registry, "ok") == 4)
    finally:
        await sender.stop()


async def test_calls_queued_or_in_flight_at_stop_are_counted_dropped_not_error(
        shadow_server: tuple[int, list[str], asyncio.Event]) -> None:
    port, _, release = shadow_server
    release.clear()  # the shadow holds every call
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{port}", "shadow_name": "next",
                             "shadow_concurrency": 2}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    await sender.start()
    for number in range(5):
        sender.append(call(number))
    await eventually(lambda: sum(lane.inflight for lane in sender._lanes.values()) == 2)
    await sender.stop()  # 2 in flight, 3 queued
    release.set()
    assert (outcome(registry, "dropped"), outcome(registry, "error")) == (5, 0)
    assert metric(registry, "sidecar_shadow_queue_records", shadow="next") == 0


async def test_the_queue_is_bounded_by_bytes_too(shadow_server: tuple[int, list[str], asyncio.Event]) -> None:
    port, _, release = shadow_server
    release.clear()
    size = len(call(0).request) + len(call(0).response)
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{port}", "shadow_name": "next",
                             "shadow_queue_max_bytes": 3 * size, "shadow_concurrency": 1}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    await sender.start()
    try:
        sender.append(call(0))
        await asyncio.sleep(0.05)  # in flight: no longer queued
        for number in range(1, 8):
            sender.append(call(number))
        [lane] = sender._lanes.values()
        assert outcome(registry, "dropped") == 4 and len(lane.queue) == 3 and lane.queued_bytes == 3 * size
        sender.append(call(8)._replace(request=bytes(4 * size)))  # alone larger than the bound: dropped itself
        assert outcome(registry, "dropped") == 8 and not lane.queue and lane.queued_bytes == 0
        release.set()
        await eventually(lambda: outcome(registry, "ok") == 1)
    finally:
        await sender.stop()


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_beyond_the_size_limit_is_not_read_whole_but_counted_oversize(chunked: bool) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        if not chunked:
            response.content_length = 1024 * 1024
        await response.prepare(request)
        for _ in range(16):
            await response.write(bytes(64 * 1024))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", big)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{runner.addresses[0][1]}",
                             "shadow_name": "next"}).shadow
    registry = CollectorRegistry()
    delivered: list[CaptureRecord] = []
    sender = ShadowSender(settings, registry, delivered.append, max_body_bytes=100 * 1024)
    await sender.start()
    try:
        sender.append(call(0))
        await eventually(lambda: outcome(registry, "oversize") == 1)
    finally:
        await sender.stop()
        await runner.cleanup()
    assert delivered == [] and sender.snapshot("iris")["next"]["error_rate"]["shadow"] == 1.0


async def test_an_unreachable_shadow_is_counted_and_then_skipped_without_connecting() -> None:
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{free_port()}", "shadow_name": "next"}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    await sender.start()
    try:
        for number in range(DOWN_AFTER):
            sender.append(call(number))
        await eventually(lambda: outcome(registry, "unreachable") == DOWN_AFTER)
        [lane] = sender._lanes.values()
        assert lane.breakers["rest"].down_until > 0
        sender.append(call(99))  # counted at once: nothing queued, nothing dialled
        assert outcome(registry, "unreachable") == DOWN_AFTER + 1 and not lane.queue and not lane.inflight
    finally:
        await sender.stop()


@pytest.fixture
async def grpc_shadow() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A gRPC shadow answering Predict with an empty PredictResponse; the request messages it got."""
    got: list[bytes] = []

    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        got.append(request)
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(predict)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield port, got
    await server.stop(0)


def grpc_call(number: int, request: bytes) -> CaptureRecord:
    return CaptureRecord(f"id-{number}", 1.0, "iris", "1", "", "grpc", "tfserving", "predict", request, b"", 0, 0.002)


async def test_a_compressed_grpc_request_is_sent_as_its_inflated_message_renamed_or_not(
        grpc_shadow: tuple[int, list[bytes]]) -> None:
    port, got = grpc_shadow
    message = predict_pb2.PredictRequest()
    message.model_spec.name = "iris"
    message.model_spec.version.value = 1
    message.inputs["x"].float_val.extend([1.0] * 64)
    plain = message.SerializeToString()
    packed = gzip.compress(plain)
    framed = b"\x01" + len(packed).to_bytes(4, "big") + packed  # as the h2 engine captures a compressed message
    registry = CollectorRegistry()
    settings = from_mapping({"shadow_models": {"iris": {"grpc": f"127.0.0.1:{port}", "name": "next"},
                                               "other": {"grpc": f"127.0.0.1:{port}", "name": "next",
                                                         "model": "iris_next"}}}).shadow
    sender = ShadowSender(settings, registry)
    await sender.start()
    try:
        sender.append(grpc_call(0, framed))
        sender.append(grpc_call(1, framed)._replace(model="other"))  # renamed: the model spec is rewritten
        await eventually(lambda: len(got) == 2)
        await eventually(lambda: outcome(registry, "ok") == 1)
    finally:
        await sender.stop()
    assert plain in got  # in whichever order the two calls arrived
    renamed = predict_pb2.PredictRequest.FromString(got[1 - got.index(plain)])
    assert renamed.model_spec.name == "iris_next" and renamed.inputs["x"].float_val == message.inputs["x"].float_val


async def test_start_opens_the_global_lane_and_says_what_share_is_mirrored_and_what_it_costs(
        shadow_server: tuple[int, list[str], asyncio.Event], caplog: pytest.LogCaptureFixture) -> None:
    port, _, _ = shadow_server
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{port}", "shadow_name": "next",
                             "shadow_models": {"digits": {"sample": 0.25, "name": "small"}}}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    with caplog.at_level(logging.INFO, logger="sidecar.shadow.sender"):
        await sender.start()
    try:
        assert {lane.target.name for lane in sender._lanes.values()} == {"next", "small"}
        assert all(lane.task is not None for lane in sender._lanes.values())  # nothing left for the first call
        assert metric(registry, "sidecar_shadow_sample_ratio", model="*", shadow="next") == 1.0
        assert metric(registry, "sidecar_shadow_sample_ratio", model="digits", shadow="small") == 0.25
        lines = [record.getMessage() for record in caplog.records]
        assert any("100% of every model's inference calls mirrored" in line and "shadow_sample" in line
                   and "CPU" in line for line in lines)
        assert any(line.startswith("model digits: 25% of its inference calls mirrored to shadow small")
                   for line in lines)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="sidecar.shadow.sender"):
            for number in range(MAX_CACHED_MODELS + 500):  # client-chosen model names: no log line, no new lane
                sender.append(call(number, model=f"m{number}")._replace(shadow="x"))  # queued nowhere
        assert caplog.records == [] and len(sender._lanes) == 2
        assert len(sender._routes) <= MAX_CACHED_MODELS and "m0" not in sender._routes
        assert f"m{MAX_CACHED_MODELS + 499}" in sender._routes  # the newest kept, the oldest evicted
    finally:
        await sender.stop()


async def test_a_rest_only_shadow_says_once_that_grpc_calls_are_counted_unsupported(
        shadow_server: tuple[int, list[str], asyncio.Event], caplog: pytest.LogCaptureFixture) -> None:
    port, asked, _ = shadow_server
    settings = from_mapping({"shadow_rest": f"http://127.0.0.1:{port}", "shadow_name": "next"}).shadow
    registry = CollectorRegistry()
    sender = ShadowSender(settings, registry)
    await sender.start()
    try:
        with caplog.at_level(logging.WARNING, logger="sidecar.shadow.sender"):
            for number in range(3):
                sender.append(grpc_call(number, b"\x0a\x00"))
            await eventually(lambda: outcome(registry, "unsupported") == 3)
    finally:
        await sender.stop()
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["shadow next has no grpc address: the grpc calls mirrored to it are counted unsupported (a call "
                     "is never translated to the other protocol)"] and asked == []
