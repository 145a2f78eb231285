from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.rest import create_app

ROW = json.dumps({"instances": [[5.0, 3.4, 1.5, 0.25]]}).encode()


@pytest.fixture
async def server(registry: ModelRegistry) -> AsyncIterator[TestServer]:
    test_server = TestServer(create_app(registry), host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


async def test_v1_answers_json_with_tf_servings_content_type(server: TestServer) -> None:
    async with ClientSession() as session, session.post(server.make_url("/v1/models/classifier:predict"),
                                                        data=ROW) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert len((await response.json())["predictions"]) == 1


async def test_gzip_bodies_are_decompressed_and_broken_ones_are_a_json_400(server: TestServer) -> None:
    url = server.make_url("/v1/models/classifier:predict")
    async with ClientSession() as session:
        async with session.post(url, data=gzip.compress(ROW), headers={"Content-Encoding": "gzip"}) as response:
            assert response.status == 200
        async with session.post(url, data=b"not gzip", headers={"Content-Encoding": "gzip"}) as response:
            assert response.status == 400 and "error" in await response.json()


async def test_other_paths_get_a_404_html_page(server: TestServer) -> None:
    async with ClientSession() as session, session.get(server.make_url("/v3/models/x")) as response:
        assert response.status == 404 and response.content_type == "text/html"
        assert "<H1>Not Found</H1>" in await response.text()


async def test_get_bodies_are_never_read(server: TestServer) -> None:
    async with ClientSession() as session, session.get(server.make_url("/v1/models/classifier"),
                                                       data=b"x" * 100_000) as response:
        assert response.status == 200


async def test_v2_routes_are_served(server: TestServer) -> None:
    async with ClientSession() as session, session.get(server.make_url("/v2/health/live")) as response:
        assert response.status == 200 and await response.json() == {"live": True}


async def test_delay_header_holds_only_that_request(server: TestServer) -> None:
    url = server.make_url("/v1/models/classifier")
    async with ClientSession(timeout=ClientTimeout(total=1.0)) as session:
        delayed = asyncio.ensure_future(session.get(url, headers={"X-Testbed-Delay-Ms": "5000"}))
        async with session.get(url) as response:
            assert response.status == 200
        with pytest.raises(asyncio.TimeoutError):
            await delayed


async def test_echo_header_returns_the_request_headers(server: TestServer) -> None:
    async with ClientSession() as session, session.get(
            server.make_url("/v1/models/classifier"),
            headers={"X-Testbed-Echo-Headers": "1", "traceparent": "00-x"}) as response:
        echoed = json.loads(response.headers["X-Testbed-Echo-Headers"])
        assert echoed["traceparent"] == "00-x"
    async with ClientSession() as session, session.get(server.make_url("/v1/models/classifier")) as response:
        assert "X-Testbed-Echo-Headers" not in response.headers
