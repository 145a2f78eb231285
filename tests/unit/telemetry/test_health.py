"""Upstream readiness: one log line per change of verdict, and the readiness gauge Prometheus alerts on."""

from __future__ import annotations

import logging

import pytest

from sidecar.telemetry.health import UpstreamHealth, UpstreamMetrics
from sidecar.telemetry.metrics import new_registry


async def test_each_change_of_an_upstreams_verdict_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([True, True, False, False, False, True])

    async def probe() -> bool:
        return next(answers)

    health = UpstreamHealth({"rest": probe}, interval=1.0)
    with caplog.at_level(logging.INFO, logger="sidecar.telemetry.health"):
        for _ in range(6):
            await health.check()
    assert [record.getMessage() for record in caplog.records] == [
        "rest upstream is up", "rest upstream is down: not answering", "rest upstream is up"]


async def test_the_readiness_gauge_follows_the_probes() -> None:
    state = {"ok": False}

    async def probe() -> bool:
        return state["ok"]

    health = UpstreamHealth({"grpc": probe}, interval=1.0)
    registry = new_registry()
    registry.register(UpstreamMetrics(health))
    await health.check()
    assert registry.get_sample_value("sidecar_upstream_up", {"protocol": "grpc"}) == 0
    state["ok"] = True
    await health.check()
    assert registry.get_sample_value("sidecar_upstream_up", {"protocol": "grpc"}) == 1
