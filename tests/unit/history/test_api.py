"""`GET /v1/monitor/{model}/history` on a real admin listener: pages oldest first through the cursor, bounds on
every parameter (400 naming it), 404 for an unknown model, the features filter and its default bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.history.api import DEFAULT_FEATURES, MAX_LIMIT, HistoryApi
from sidecar.history.store import HistoryStore
from sidecar.telemetry.admin import AdminServer, build_admin_app
from sidecar.telemetry.metrics import new_registry

BUCKETS = 250
WIDE = DEFAULT_FEATURES + 20


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[str]:
    store = HistoryStore(tmp_path / "history.sqlite", retention=1e12, max_rows=10_000, clock=lambda: 1e6)
    await store.start()
    for number in range(BUCKETS):
        start = 1000.0 + 60 * number
        inputs = {f"x[{i}]": {"kind": "numeric", "count": 5, "mean": float(i)} for i in range(WIDE)}
        store.put("classifier", start, start + 60, {"start": start, "end": start + 60, "instances": 5,
                                                    "requests": 1, "inputs": inputs, "outputs": None,
                                                    "labels": None, "drift": {}, "outliers": {},
                                                    "bucket": {"kind": "time", "seconds": 60.0}})
    api = HistoryApi(store, {"kind": "time", "seconds": 60.0}, lambda: ["classifier", "fresh"])
    server = AdminServer(build_admin_app(new_registry(), None, history=api.answer), "127.0.0.1", 0)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/v1/monitor"
    finally:
        await server.stop()
        await store.stop()


async def get(url: str, **params: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        return response.status, await response.json()


async def test_pages_follow_the_cursor_oldest_first_until_next_is_null(admin: str) -> None:
    starts: list[float] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"cursor": cursor} if cursor else {}
        status, body = await get(f"{admin}/classifier/history", **params)
        assert status == 200
        assert body["model"] == "classifier" and body["bucket"] == {"kind": "time", "seconds": 60.0}
        assert "bucket" not in body["buckets"][0]  # the store's own copy of the bucket kind stays inside
        starts.extend(item["start"] for item in body["buckets"])
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3
    assert starts == [1000.0 + 60 * n for n in range(BUCKETS)]


async def test_from_to_and_limit_select_a_window(admin: str) -> None:
    status, body = await get(f"{admin}/classifier/history", **{"from": "1130", "to": "1300", "limit": "2"})
    assert status == 200
    assert [item["start"] for item in body["buckets"]] == [1120.0, 1180.0]  # overlapping buckets count
    status, rest = await get(f"{admin}/classifier/history", **{"from": "1130", "to": "1300", "cursor": body["next"]})
    assert [item["start"] for item in rest["buckets"]] == [1240.0, 1300.0] and rest["next"] is None


async def test_features_restrict_the_inputs_and_the_default_is_bounded(admin: str) -> None:
    _, body = await get(f"{admin}/classifier/history", limit="1")
    assert len(body["buckets"][0]["inputs"]) == DEFAULT_FEATURES
    _, body = await get(f"{admin}/classifier/history", limit="1", features="x[110],x[3],nope")
    assert list(body["buckets"][0]["inputs"]) == ["x[110]", "x[3]"]


@pytest.mark.parametrize(("params", "named"), [
    ({"limit": "0"}, "limit"), ({"limit": str(MAX_LIMIT + 1)}, "limit"), ({"limit": "ten"}, "limit"),
    ({"from": "yesterday"}, "from"), ({"to": "nan"}, "to"), ({"from": "10", "to": "5"}, "after"),
    ({"cursor": "garbage!"}, "cursor"), ({"features": "a,,b"}, "features"),
    ({"features": ",".join(f"f{i}" for i in range(300))}, "features"),
])
async def test_bad_parameters_are_400_naming_them(admin: str, params: dict[str, str], named: str) -> None:
    status, body = await get(f"{admin}/classifier/history", **params)
    assert status == 400
    assert named in body["error"]


async def test_unknown_models_are_404_and_a_known_model_without_buckets_is_empty(admin: str) -> None:
    status, body = await get(f"{admin}/nobody/history")
    assert status == 404 and "nobody" in body["error"]
    status, body = await get(f"{admin}/fresh/history")
    assert status == 200 and body["buckets"] == [] and body["next"] is None
