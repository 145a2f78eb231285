"""The prediction lookup through a real sidecar in front of the testbed: a reference, then requests with known
prediction ids carrying injected outliers and a NaN; `GET /v1/predictions/{id}` on the admin listener shows each
instance's prediction, the outlier detector's scores and flags (the flags add up to what `sidecar_outliers_total`
counted), its data-quality issues and, after `POST /v1/feedback`, its truth. With the SQLite and the Redis store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from sidecar import config
from sidecar.app import Sidecar
from sidecar.testbed.data import classifier_batch
from tests.support.helpers import eventually, metric
from tests.support.testbed import TestbedProcess
from tests.unit.feedback.redis_server import running_redis

pytestmark = pytest.mark.slow
REFERENCE = 300
TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OUTLIERS = {"model": "classifier", "detector": "mahalanobis"}


@pytest.fixture(params=["sqlite", "redis"])
async def sidecar(request: pytest.FixtureRequest, testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[Sidecar]:
    async def run(store: str) -> AsyncIterator[Sidecar]:
        settings = config.from_mapping({
            "listen_rest": "127.0.0.1:0", "upstream_rest": testbed.rest_url, "listen_grpc": "off",
            "upstream_grpc": "off", "listen_admin": "127.0.0.1:0", "state_dir": str(tmp_path / "state"),
            "reference_size": REFERENCE, "window_size": REFERENCE, "capture_flush_interval": "0.05",
            "admin_token": TOKEN, "store": store})
        running = Sidecar(settings)
        await running.start()
        try:
            yield running
        finally:
            await running.stop()

    if request.param == "sqlite":
        async for running in run("sqlite"):
            yield running
        return
    with running_redis(tmp_path) as url:
        async for running in run(url):
            yield running


async def predict(session: ClientSession, sidecar: Sidecar, rows: np.ndarray, prediction_id: str,
                  path: str = "classifier") -> list[int]:
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/{path}:predict"
    body = '{"instances": ' + str(rows.tolist()).replace("nan", "NaN") + "}"
    async with session.post(url, data=body, headers={"X-Prediction-Id": prediction_id}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Prediction-Id"] == prediction_id
        return [int(np.argmax(row)) for row in (await response.json())["predictions"]]


async def lookup(session: ClientSession, sidecar: Sidecar, prediction_id: str,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{sidecar.admin_port}/v1/predictions/{prediction_id}"
    async with session.get(url, headers=AUTH if headers is None else headers) as response:
        return response.status, await response.json()


async def test_a_prediction_s_outliers_quality_and_truth_are_looked_up_by_its_id(sidecar: Sidecar) -> None:
    registry = sidecar.registry
    async with ClientSession() as session:
        reference, _ = classifier_batch(REFERENCE, seed=11)
        for start in range(0, REFERENCE, 50):
            await predict(session, sidecar, reference[start:start + 50], f"ref-{start}")
        await eventually(lambda: metric(registry, "sidecar_reference_instances", model="classifier") >= REFERENCE)
        before = metric(registry, "sidecar_outliers_total", **OUTLIERS)

        probes: dict[str, tuple[np.ndarray, list[int]]] = {}  # id -> (rows, the rows injected as outliers)
        rng = np.random.default_rng(12)
        for number in range(8):
            rows, _ = classifier_batch(10, seed=100 + number)
            injected = sorted(rng.choice(10, size=2, replace=False).tolist())
            rows[injected] = 40.0 + 5.0 * number  # far outside every class
            probes[f"probe-{number}"] = (rows, injected)
        nan_rows, _ = classifier_batch(3, seed=200)
        nan_rows[1, 2] = np.nan
        probes["probe-nan"] = (nan_rows, [])
        predicted: dict[str, list[int]] = {}
        for prediction_id, (rows, _) in probes.items():
            path = "classifier/versions/1" if prediction_id == "probe-0" else "classifier"
            predicted[prediction_id] = await predict(session, sidecar, rows, prediction_id, path)

        answers: dict[str, dict[str, Any]] = {}

        async def stored() -> bool:
            for prediction_id in probes:
                if prediction_id not in answers:
                    status, body = await lookup(session, sidecar, prediction_id)
                    if status == 200:
                        answers[prediction_id] = body
            return len(answers) == len(probes)

        for _ in range(600):
            if await stored():
                break
            await asyncio.sleep(0.05)
        assert set(answers) == set(probes), "not every probe was stored within 30 s"

        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier",
                               headers=AUTH) as response:
            threshold = (await response.json())["outliers"]["mahalanobis"]["threshold"]

        flags = 0
        for prediction_id, (rows, injected) in probes.items():
            answer = answers[prediction_id]
            assert answer["model"] == "classifier" and answer["task"] == "multiclass"
            assert answer["version"] == ("1" if prediction_id == "probe-0" else None)
            assert [item["instance"] for item in answer["instances"]] == list(range(len(rows)))
            for item, label in zip(answer["instances"], predicted[prediction_id], strict=True):
                assert item["predicted"] == str(label)
                assert item["truth"] is None
                if item["outliers"] == {}:  # not scored: only the row with a NaN
                    assert (prediction_id, item["instance"]) == ("probe-nan", 1)
                    continue
                verdict = item["outliers"]["mahalanobis"]
                assert set(item["outliers"]) == {"mahalanobis"}
                assert isinstance(verdict["score"], float)
                assert verdict["outlier"] == (verdict["score"] > threshold)
                if item["instance"] in injected:
                    assert verdict["outlier"] and "above_range" in item["quality"]
                flags += verdict["outlier"]
        nan_instance = answers["probe-nan"]["instances"][1]
        assert "nan" in nan_instance["quality"] and nan_instance["outliers"] == {}
        assert all("nan" not in item["quality"] for item in answers["probe-nan"]["instances"][::2])
        assert flags >= 16  # the 16 injected, plus any normal row the 1% false-positive rate flagged

        await eventually(lambda: metric(registry, "sidecar_outliers_total", **OUTLIERS) - before == flags,
                         timeout=10, state=lambda: metric(registry, "sidecar_outliers_total", **OUTLIERS) - before)

        truths = [(label + 1) % 3 for label in predicted["probe-3"]]
        async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback",
                                json={"prediction_id": "probe-3", "truth": truths}) as response:
            assert response.status == 200 and (await response.json())["joined"] == 10
        status, answer = await lookup(session, sidecar, "probe-3")
        assert status == 200
        assert [item["truth"] for item in answer["instances"]] == [str(truth) for truth in truths]
        assert [item["outliers"] for item in answer["instances"]] == [
            item["outliers"] for item in answers["probe-3"]["instances"]]

        status, missing = await lookup(session, sidecar, "never-sent")
        assert status == 404 and "unknown prediction id 'never-sent'" in missing["error"]
        status, expired = await lookup(session, sidecar, "00000000-0000-7000-8000-000000000000")
        assert status == 404 and "has expired" in expired["error"] and "store_retention" in expired["error"]
        status, refused = await lookup(session, sidecar, "probe-3", headers={})
        assert status == 401 and "bearer" in refused["error"]
