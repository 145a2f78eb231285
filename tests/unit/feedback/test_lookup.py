"""`GET /v1/predictions/{id}` on a real admin listener, answered by a real feedback service and its SQLite store:
predictions from memory before their write and from the store after, the truth once feedback joined, "not
recorded" for what old rows lack, 404s with their reason, and the bearer token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.feedback.api import FeedbackService
from sidecar.feedback.lookup import found, not_found
from sidecar.feedback.store import PredictionRecord, StoredInstance
from sidecar.messages.results import PredictionDetails
from sidecar.telemetry.admin import AdminServer, build_admin_app
from sidecar.telemetry.metrics import new_registry

from .builders import answer, classified, post
from .conftest import StartService

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(start_service: StartService) -> AsyncIterator[tuple[FeedbackService, str]]:
    service = await start_service(store_flush_interval=30.0)  # rows stay queued until a flush or a claim
    server = AdminServer(build_admin_app(new_registry(), None, token=TOKEN, prediction=service.describe),
                         "127.0.0.1", 0)
    await server.start()
    yield service, f"http://127.0.0.1:{server.port}/v1/predictions/"
    await server.stop()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH if headers is None else headers) \
            as response:
        return response.status, await response.json()


def with_details(prediction_id: str) -> Any:
    predictions = classified("iris", prediction_id, [2, 0])
    return predictions._replace(details=PredictionDetails(["4", "4"], ["M", ""], ["a", "n"],
                                                          {"mahalanobis": [17.5, float("nan")]}))


async def test_a_prediction_is_answered_before_and_after_its_write_and_shows_its_truth(
        admin: tuple[FeedbackService, str]) -> None:
    service, url = admin
    service.add_predictions(with_details("p-1"))
    assert service.recent.queued_rows == 2  # not written yet: answered from memory
    status, body = await get(url + "p-1")
    assert status == 200
    expected_instances = [
        {"instance": 0, "predicted": "2", "outliers": {"mahalanobis": {"score": 17.5, "outlier": True}},
         "quality": ["above_range"], "truth": None},
        {"instance": 1, "predicted": "0", "outliers": {}, "quality": ["nan"], "truth": None},
    ]
    assert body == {"prediction_id": "p-1", "model": "iris", "version": "4", "time": body["time"],
                    "task": "multiclass", "instances": expected_instances}
    assert body["time"] == pytest.approx(time.time(), abs=5)

    feedback = await service.handle(post({"prediction_id": "p-1", "truth": [2, 1]}))
    assert answer(feedback) == {"joined": 2, "duplicate": 0, "pending": 0}
    assert service.recent.queued_rows == 0  # the claim wrote the rows first
    status, body = await get(url + "p-1")
    assert status == 200
    assert [item["truth"] for item in body["instances"]] == ["2", "1"]
    assert [item["outliers"] for item in body["instances"]] == [item["outliers"] for item in expected_instances]


async def test_unknown_and_expired_ids_are_404_with_the_reason_and_the_token_is_required(
        admin: tuple[FeedbackService, str]) -> None:
    _, url = admin
    status, body = await get(url + "nobody")
    assert status == 404 and body["error"].startswith("unknown prediction id 'nobody': not in the prediction store")
    status, body = await get(url + "00000000-0000-7000-8000-000000000000")  # a UUIDv7 minted in 1970
    assert status == 404 and "has expired" in body["error"] and "store_retention" in body["error"]
    status, body = await get(url + "nobody", headers={})
    assert status == 401 and "bearer token" in body["error"]


async def test_the_route_says_when_it_is_off() -> None:
    server = AdminServer(build_admin_app(new_registry(), None), "127.0.0.1", 0)
    await server.start()
    try:
        status, body = await get(f"http://127.0.0.1:{server.port}/v1/predictions/p-1", headers={})
    finally:
        await server.stop()
    assert status == 404 and "prediction lookup is off" in body["error"]


def test_a_stored_prediction_past_the_retention_is_expired_and_old_rows_read_not_recorded() -> None:
    record = PredictionRecord("iris", None, 1000.0, {0: StoredInstance("regression", 2.5, None, None, {}),
                                                     1: StoredInstance("unusable", "", "", "", {})}, {0: None})
    status, body = found("p", record, retention=60.0, now=1030.0)
    assert status == 200 and body["version"] == "not recorded"
    assert body["instances"] == [
        {"instance": 0, "predicted": 2.5, "outliers": "not recorded", "quality": "not recorded",
         "truth": "not recorded"},
        {"instance": 1, "predicted": None, "outliers": {}, "quality": [], "truth": None},
    ]
    status, body = found("p", record, retention=60.0, now=1100.0)
    assert status == 404 and "'p' has expired: it was stored 100 s ago" in body["error"]
    now = time.time()
    status, body = not_found("0190b1a4-5c00-7000-8000-000000000001", retention=1e12, now=now)
    assert status == 404 and "not analysed yet, or never" in body["error"]
