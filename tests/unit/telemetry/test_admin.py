"""The admin listener: metrics in both exposition formats, liveness, readiness that follows the upstream, the
drill-down, and the optional bearer token."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp

from sidecar.telemetry.admin import METRICS_CACHE_SECONDS, AdminServer, build_admin_app, json_safe
from sidecar.telemetry.health import UpstreamHealth, tcp_http_probe
from sidecar.telemetry.metrics import RequestMetrics, new_registry


async def start_admin(health: UpstreamHealth | None, monitor: Any = None, token: str | None = None) -> AdminServer:
    registry = new_registry()
    metrics = RequestMetrics()
    registry.register(metrics)
    metrics.record("iris", "", "rest", "predict", "200", 0.01, 0.005, 100, 50)
    server = AdminServer(build_admin_app(registry, health, monitor, lambda: ["iris"], token=token), "127.0.0.1", 0)
    await server.start()
    return server


async def test_metrics_in_prometheus_text_and_openmetrics() -> None:
    server = await start_admin(None)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await response.text()
            assert ('sidecar_requests_total{code="200",method="predict",model="iris",protocol="rest",version=""} 1.0'
                    in text)
            async with session.get(f"http://127.0.0.1:{server.port}/metrics",
                                   headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await response.text()).rstrip().endswith("# EOF")
    finally:
        await server.stop()


async def test_scrapes_within_a_second_share_one_encoding() -> None:
    registry = new_registry()
    metrics = RequestMetrics()
    registry.register(metrics)
    server = AdminServer(build_admin_app(registry, None), "127.0.0.1", 0)
    await server.start()
    line = 'sidecar_requests_total{code="200",method="predict",model="iris",protocol="rest",version=""}'
    try:
        async with aiohttp.ClientSession() as session:
            async def scrape() -> str:
                async with session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                    return await response.text()

            metrics.record("iris", "", "rest", "predict", "200", 0.01, 0.005, 100, 50)
            assert f"{line} 1.0" in await scrape()
            metrics.record("iris", "", "rest", "predict", "200", 0.01, 0.005, 100, 50)
            assert f"{line} 1.0" in await scrape()  # the same encoding, not encoded again
            await asyncio.sleep(METRICS_CACHE_SECONDS)
            assert f"{line} 2.0" in await scrape()
    finally:
        await server.stop()


async def test_readyz_follows_the_upstream_while_healthz_stays_alive() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    health = UpstreamHealth({"rest": lambda: tcp_http_probe("127.0.0.1", port)}, interval=0.05)
    await health.start()
    server = await start_admin(health)
    upstream = None
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            upstream = await asyncio.start_server(answer, "127.0.0.1", port)
            await asyncio.sleep(0.3)
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 200
    finally:
        if upstream is not None:
            upstream.close()
        await health.stop()
        await server.stop()


async def test_monitor_drill_down_is_json_and_unknown_models_are_404() -> None:
    snapshots = {"iris": {"model": "iris", "p": float("nan"), "values": (1, 2)}}
    server = await start_admin(None, lambda model, extremes: snapshots.get(model))
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            async with session.get(f"{base}/v1/monitor/iris") as response:
                assert response.status == 200
                assert await response.json() == {"model": "iris", "p": None, "values": [1, 2]}
            async with session.get(f"{base}/v1/monitor/nope") as response:
                assert response.status == 404
                assert "nope" in (await response.json())["error"]
            async with session.get(f"{base}/v1/monitor") as response:
                assert await response.json() == {"models": ["iris"]}
    finally:
        await server.stop()


async def test_unknown_routes_and_wrong_methods_answer_json_errors() -> None:
    server = await start_admin(None, lambda model, extremes: None)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            async with session.get(f"{base}/v1/nothing") as response:
                assert response.status == 404
                assert await response.json() == {"error": "Not Found: GET /v1/nothing"}
            async with session.post(f"{base}/metrics") as response:
                assert response.status == 405 and "GET" in response.headers["Allow"]
                assert (await response.json())["error"] == "Method Not Allowed: POST /metrics"
    finally:
        await server.stop()


async def test_the_drill_down_keeps_raw_extremes_only_when_asked() -> None:
    asked: list[bool] = []

    def monitor(model: str, extremes: bool) -> dict[str, Any]:
        asked.append(extremes)
        return {"model": model}

    server = await start_admin(None, monitor)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}/v1/monitor/iris"
            for query in ("", "?extremes=true", "?extremes=no"):
                async with session.get(base + query) as response:
                    assert response.status == 200
    finally:
        await server.stop()
    assert asked == [False, True, False]


async def test_with_a_token_every_route_but_the_probes_needs_it() -> None:
    server = await start_admin(None, lambda model, extremes: {"model": model}, token="t0k")
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            for path in ("/metrics", "/v1/monitor", "/v1/monitor/iris"):
                async with session.get(base + path) as response:
                    assert response.status == 401
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                async with session.get(base + path, headers={"Authorization": "Bearer wrong"}) as response:
                    assert response.status == 401
                async with session.get(base + path, headers={"Authorization": "Bearer t0k"}) as response:
                    assert response.status == 200
            for path in ("/healthz", "/readyz"):
                async with session.get(base + path) as response:
                    assert response.status == 200
    finally:
        await server.stop()


def test_json_safe_turns_non_finite_floats_into_null() -> None:
    assert json_safe({"a": [float("inf"), 1.5], 2: {"b": float("-inf")}}) == {"a": [None, 1.5], "2": {"b": None}}
