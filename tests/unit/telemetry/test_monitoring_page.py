"""The monitoring page's files on the admin listener: served from the package, open without the admin token (they
hold no data) while the data routes keep needing it, revalidated by ETag, and all shipped in the wheel."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.telemetry.admin import AdminServer, build_admin_app
from sidecar.telemetry.metrics import new_registry
from sidecar.telemetry.monitoring_page import load_assets

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "sidecar" / "telemetry" / "static"


@pytest.fixture
async def admin_with_token() -> AsyncIterator[str]:
    server = AdminServer(build_admin_app(new_registry(), None, lambda model, extremes: None, lambda: ["iris"],
                                         token="secret"), "127.0.0.1", 0)
    await server.start()
    yield f"http://127.0.0.1:{server.port}"
    await server.stop()


def referenced_assets() -> set[str]:
    """Every file the page loads: `ui/...` in the HTML and the relative imports of its modules."""
    names = set(re.findall(r'"ui/([\w.-]+)"', (STATIC / "index.html").read_text()))
    for script in STATIC.glob("*.js"):
        names |= set(re.findall(r"from '\./([\w.-]+)'", script.read_text()))
    return names


async def test_the_page_and_every_file_it_loads_answer_without_the_token(admin_with_token: str) -> None:
    types = {".js": "text/javascript", ".css": "text/css"}
    assert {"monitor.js", "monitor.css", "metrics.js", "charts.js"} <= referenced_assets()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin_with_token}/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert "<title>sidecar monitor</title>" in await response.text()
        for name in referenced_assets():
            async with session.get(f"{admin_with_token}/ui/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == types[Path(name).suffix]
                assert await response.read() == (STATIC / name).read_bytes()


async def test_the_data_routes_still_need_the_token(admin_with_token: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/metrics", "/v1/monitor", "/v1/monitor/iris"):
            async with session.get(f"{admin_with_token}{path}") as response:
                assert response.status == 401, path
        async with session.get(f"{admin_with_token}/v1/monitor",
                               headers={"Authorization": "Bearer secret"}) as response:
            assert (await response.json()) == {"models": ["iris"]}


async def test_unknown_files_are_404_in_json_and_nothing_outside_the_folder_is_served(admin_with_token: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin_with_token}/ui/nothing.js") as response:
            assert response.status == 404
            assert "nothing.js" in (await response.json())["error"]
        async with session.get(f"{admin_with_token}/ui/%2e%2e%2fadmin.py") as response:
            assert response.status == 404  # the asset lookup saw the whole name and found no such file
            assert (await response.json()) == {"error": "no page asset '../admin.py'"}
        async with session.get(f"{admin_with_token}/ui/%2e%2e/admin.py") as response:
            assert response.status == 401  # normalised to /admin.py: not a page file, so the token is asked for


async def test_an_unchanged_file_is_revalidated_with_its_etag(admin_with_token: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin_with_token}/ui/monitor.js") as response:
            etag = response.headers["ETag"]
            assert response.headers["Cache-Control"] == "no-cache"
        async with session.get(f"{admin_with_token}/ui/monitor.js", headers={"If-None-Match": etag}) as response:
            assert response.status == 304
            assert await response.read() == b""


def test_every_static_file_is_package_data_and_loaded() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "sidecar.telemetry"]
    files = sorted(path.name for path in STATIC.iterdir() if path.is_file())
    for name in files:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name
    assert sorted(load_assets()) == files
