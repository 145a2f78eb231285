"""Quality before labels through the whole sidecar: the numpy testbed's classifier behind the REST proxy, its
probabilities estimated per window in a real analysis worker, then labels posted as feedback calibrate the estimate
and set the realized accuracy beside it (/metrics and /v1/monitor)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from sidecar.app import Sidecar
from sidecar.testbed import data
from tests.integration.test_feedback import feedback, metric, predict
from tests.support.sidecars import rest_only, sidecar_factory
from tests.support.testbed import TestbedProcess

WINDOW = 100


@pytest.fixture
async def sidecar(numpy_testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with sidecar_factory(rest_only(numpy_testbed.rest_url, tmp_path / "state"), result_interval="0.1",
                               reference_size="100", window_size=str(WINDOW), estimation_min_labels="50") as start:
        yield await start()


async def estimate_of(session: ClientSession, sidecar: Sidecar, condition: Any, timeout: float = 30.0) -> dict[
        str, Any]:
    deadline = time.monotonic() + timeout
    snapshot: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier") as response:
            if response.status == 200:
                snapshot = await response.json()
                estimate = snapshot.get("estimated_quality")
                if estimate is not None and condition(estimate):
                    return dict(estimate)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no such estimate: {snapshot.get('estimated_quality')}")


@pytest.mark.slow
async def test_estimate_moves_before_labels_then_calibrates_on_feedback(sidecar: Sidecar) -> None:
    async with ClientSession() as session:
        calls: list[tuple[str, np.ndarray]] = []
        features, classes = data.classifier_batch(3 * WINDOW, seed=21)
        for start in range(0, 3 * WINDOW, 10):
            prediction_id, _ = await predict(session, sidecar, features[start:start + 10])
            calls.append((prediction_id, classes[start:start + 10]))
        clean = await estimate_of(session, sidecar, lambda e: e["window"] >= 2)
        assert clean["calibration"] == "assumed" and clean["compared_with_labels"] == []
        assert await metric(session, sidecar, "sidecar_quality_estimation_calibrated", model="classifier") == 0
        assert await metric(session, sidecar, "sidecar_quality_estimated_accuracy", model="classifier") == (
            pytest.approx(clean["accuracy"]))

        # inputs between the classes' centres: the model is less sure, and the estimate drops with no label sent
        middle = (data.CLASS_CENTERS[0] + data.CLASS_CENTERS[1]) / 2
        unsure = (middle + np.random.default_rng(3).normal(0, 0.3, (WINDOW, 4))).astype(np.float32)
        for start in range(0, WINDOW, 10):
            await predict(session, sidecar, unsure[start:start + 10])
        shifted = await estimate_of(session, sidecar, lambda e: e["window"] >= 3)
        assert shifted["accuracy"] < clean["accuracy"] - 0.1

        for prediction_id, truth in calls:
            status, body = await feedback(session, sidecar, {"prediction_id": prediction_id,
                                                             "truth": truth.tolist()})
            assert status == 200 and body["joined"] == len(truth), body
        compared = await estimate_of(session, sidecar,
                                     lambda e: sum(w["labelled"] for w in e["compared_with_labels"]) >= 2 * WINDOW)
        for window in compared["compared_with_labels"]:
            assert 0.0 <= window["realized_accuracy"] <= 1.0
            assert window["estimated_accuracy_labelled"] == pytest.approx(window["estimated_accuracy"], abs=0.05)

        for start in range(0, WINDOW, 10):  # the next window is estimated with the calibration
            await predict(session, sidecar, features[start:start + 10])
        calibrated = await estimate_of(session, sidecar, lambda e: e["calibration"] == "isotonic")
        assert "isotonic" in calibrated["calibration_note"] and calibrated["labelled_pairs"] >= 2 * WINDOW
        deadline = time.monotonic() + 5  # /metrics is rendered at most once a second
        while await metric(session, sidecar, "sidecar_quality_estimation_calibrated", model="classifier") != 1:
            assert time.monotonic() < deadline, "sidecar_quality_estimation_calibrated stayed 0"
            await asyncio.sleep(0.2)
