"""The shadow sender against real HTTP servers on loopback: answers paired with the primary's for the analysis,
outcomes counted, a full queue drops the oldest, an unreachable shadow is skipped at append."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.config import from_mapping
from sidecar.messages.records import CaptureRecord
from sidecar.shadow.sender import DOWN_AFTER, ShadowSender
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
