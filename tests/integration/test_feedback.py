"""Ground truth through the whole sidecar: predict through the REST proxy (real testbed model), post feedback on
the same port, and read the quality on /metrics and /v1/monitor; across a restart (SQLite in the state directory)
and across two replicas sharing a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import accuracy_score, confusion_matrix

from sidecar.app import Sidecar
from sidecar.testbed import data
from tests.support.sidecars import StartSidecar, rest_only, sidecar_factory
from tests.support.testbed import TestbedProcess
from tests.unit.feedback.redis_server import running_redis

WAIT_SECONDS = 60.0


@pytest.fixture
async def start_sidecar(testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[StartSidecar]:
    async with sidecar_factory(rest_only(testbed.rest_url, tmp_path / "state"), pending_timeout="30s") as start:
        yield start


async def predict(session: ClientSession, sidecar: Sidecar, features: np.ndarray) -> tuple[str, np.ndarray]:
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/classifier:predict"
    async with session.post(url, json={"instances": features.tolist()}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
        return response.headers["X-Prediction-Id"], np.asarray(body["predictions"])


async def feedback(session: ClientSession, sidecar: Sidecar, document: Any) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback"
    async with session.post(url, data=json.dumps(document), headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


async def metric(session: ClientSession, sidecar: Sidecar, name: str, **labels: str) -> float:
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_for_metric(session: ClientSession, sidecar: Sidecar, value: float, name: str, **labels: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if await metric(session, sidecar, name, **labels) == value:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} did not reach {value}: {await metric(session, sidecar, name, **labels)}")


async def test_quality_metrics_follow_feedback_posted_on_the_rest_port(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar()
    features, truth = data.classifier_batch(40, seed=7)
    async with ClientSession() as session:
        prediction_id, probabilities = await predict(session, sidecar, features)
        # posted right after predicting: the prediction may still be in analysis, then the feedback is held
        status, answer = await feedback(session, sidecar, {"prediction_id": prediction_id, "truth": truth.tolist()})
        assert status == 200 and answer["joined"] + answer["pending"] == 40
        await wait_for_metric(session, sidecar, 40, "sidecar_feedback_total", model="classifier", outcome="joined")

        predicted = probabilities.argmax(axis=1)
        accuracy = await metric(session, sidecar, "sidecar_quality_accuracy", model="classifier")
        assert accuracy == pytest.approx(accuracy_score(truth, predicted))
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier") as response:
            quality = (await response.json())["quality"]
        labels = [int(label) for label in quality["confusion"]["labels"]]
        assert quality["confusion"]["matrix"] == confusion_matrix(truth, predicted, labels=labels).tolist()

        again_status, again = await feedback(session, sidecar, {"prediction_id": prediction_id, "instance": 0,
                                                                "truth": int(truth[0])})
        assert (again_status, again) == (200, {"joined": 0, "duplicate": 1, "pending": 0})
        status, error = await feedback(session, sidecar, {"prediction_id": prediction_id, "truth": [1, 2]})
        assert status == 400 and "40 instance(s) but 2 truth(s)" in error["error"]
        # the analysis worker wrote the predictions into the store; the main process wrote none
        assert await metric(session, sidecar, "sidecar_feedback_stored_rows_total", writer="worker") == 40
        assert await metric(session, sidecar, "sidecar_feedback_stored_rows_total", writer="main") == 0


async def test_the_feedback_token_is_required_on_the_rest_port_when_set(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(feedback_token="s3cret")
    async with ClientSession() as session:
        url = f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback"
        async with session.post(url, json={"prediction_id": "order-1", "truth": [1]}) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await response.json()
        async with session.post(url, json={"prediction_id": "order-1", "truth": [1]},
                                headers={"Authorization": "Bearer s3cret"}) as response:
            assert response.status == 200


async def test_feedback_joins_predictions_analysed_before_a_restart(start_sidecar: StartSidecar,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "kept-state"
    first = await start_sidecar(state_dir=str(state))
    features, truth = data.classifier_batch(5, seed=3)
    async with ClientSession() as session:
        prediction_id, _ = await predict(session, first, features)
        # wait until the analysis has handed the prediction to the feedback store
        deadline = time.monotonic() + WAIT_SECONDS
        while first.feedback.quality_snapshot("classifier") is None and time.monotonic() < deadline:
            probe_status, _ = await feedback(session, first, {"prediction_id": prediction_id, "instance": 0,
                                                              "truth": int(truth[0])})
            assert probe_status == 200
            await asyncio.sleep(0.2)
        await first.stop()

        second = await start_sidecar(state_dir=str(state))
        status, answer = await feedback(session, second, {"prediction_id": prediction_id, "truth": truth.tolist()})
        assert status == 200
        assert answer == {"joined": 4, "duplicate": 1, "pending": 0}


async def test_two_replicas_sharing_redis_join_feedback_posted_to_either(start_sidecar: StartSidecar,
                                                                        tmp_path: Path) -> None:
    with running_redis(tmp_path) as url:
        one = await start_sidecar(state_dir=str(tmp_path / "one"), store=url)
        two = await start_sidecar(state_dir=str(tmp_path / "two"), store=url)
        features, truth = data.classifier_batch(10, seed=11)
        async with ClientSession() as session:
            prediction_id, _ = await predict(session, one, features)
            # posted at once to the replica that did not serve the request: held, then found in Redis
            status, answer = await feedback(session, two, {"prediction_id": prediction_id, "truth": truth.tolist()})
            assert status == 200 and answer["joined"] + answer["pending"] == 10
            await wait_for_metric(session, two, 10, "sidecar_feedback_total", model="classifier", outcome="joined")
            status, again = await feedback(session, one, {"prediction_id": prediction_id, "truth": truth.tolist()})
            assert (status, again) == (200, {"joined": 0, "duplicate": 10, "pending": 0})
            assert await metric(session, one, "sidecar_feedback_stored_rows_total", writer="worker") == 10
