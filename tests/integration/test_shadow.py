"""Shadow mirroring and canary comparison end to end: the sidecar in front of the testbed, version 1 of a model as
the primary and version 2 as its shadow (the same testbed, asked another version), so the share of inputs on which
they agree is known by asking the testbed for both directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tensorflow as tf
from aiohttp import web
from sklearn.metrics import accuracy_score, mean_squared_error
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from sidecar.testbed.data import classifier_batch, regressor_batch
from tests.support.helpers import eventually, free_port, metric

pytestmark = pytest.mark.slow
WINDOW = 100
SHADOW = {"model": "classifier", "shadow": "v2"}


def base_settings(testbed: Any, tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"upstream_rest": testbed.rest_url, "upstream_grpc": f"127.0.0.1:{testbed.grpc_port}",
            "listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
            "state_dir": str(tmp_path), "reference_size": WINDOW, "window_size": WINDOW, **more}


@pytest.fixture
async def sidecar(testbed: Any, tmp_path: Path) -> AsyncIterator[Sidecar]:
    shadow = {"rest": testbed.rest_url, "grpc": f"127.0.0.1:{testbed.grpc_port}", "version": "2", "name": "v2"}
    running = Sidecar(from_mapping(base_settings(testbed, tmp_path, shadow_models={
        "classifier": shadow, "regressor": shadow})))
    await running.start()
    yield running
    await running.stop()


async def direct_rest(session: aiohttp.ClientSession, testbed: Any, model: str, version: int,
                      rows: np.ndarray) -> np.ndarray:
    """The testbed's own answer for these rows from one version of the model (no sidecar involved)."""
    async with session.post(f"{testbed.rest_url}/v1/models/{model}/versions/{version}:predict",
                            json={"instances": rows.tolist()}) as response:
        assert response.status == 200
        return np.asarray((await response.json())["predictions"], dtype=np.float64)


async def post_through(session: aiohttp.ClientSession, sidecar: Sidecar, model: str, rows: np.ndarray,
                       path: str = "/versions/1") -> list[str]:
    """POST the rows through the sidecar 50 at a time; the prediction ids of the calls."""
    ids = []
    for start in range(0, len(rows), 50):
        async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/models/{model}{path}:predict",
                                json={"instances": rows[start:start + 50].tolist()}) as response:
            assert response.status == 200, await response.text()
            ids.append(response.headers["X-Prediction-Id"])
    return ids


def compared(sidecar: Sidecar, model: str = "classifier") -> float:
    return metric(sidecar.registry, "sidecar_shadow_compared_instances_total", model=model, shadow="v2")


async def test_rest_agreement_is_the_share_of_inputs_both_versions_classify_alike_and_feedback_scores_both(
        sidecar: Sidecar, testbed: Any) -> None:
    rows, truth = classifier_batch(600, seed=21, drift=0.6)
    async with aiohttp.ClientSession() as session:
        primary = np.argmax(await direct_rest(session, testbed, "classifier", 1, rows), axis=1)
        shadow = np.argmax(await direct_rest(session, testbed, "classifier", 2, rows), axis=1)
        expected = float(np.mean(primary == shadow))
        assert 0.0 < expected < 1.0, "the two versions must differ on some inputs for the test to mean anything"
        ids = await post_through(session, sidecar, "classifier", rows)
        await eventually(lambda: compared(sidecar) >= len(rows), state=lambda: compared(sidecar))
        registry = sidecar.registry
        agreed = metric(registry, "sidecar_shadow_agreed_instances_total", **SHADOW)
        assert compared(sidecar) == len(rows)
        assert agreed / len(rows) == pytest.approx(expected, abs=1e-12)
        assert metric(registry, "sidecar_shadow_agreement", **SHADOW) == pytest.approx(
            float(np.mean((primary == shadow)[-WINDOW:])), abs=1e-12)
        disagreeing = int(np.sum((primary == 0) & (shadow == 1)))
        assert metric(registry, "sidecar_shadow_confusion_total", primary_class="0", shadow_class="1",
                      **SHADOW) == disagreeing
        assert metric(registry, "sidecar_shadow_requests_total", outcome="ok", **SHADOW) == len(ids)

        for number, prediction_id in enumerate(ids):
            async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback",
                                    json={"prediction_id": prediction_id,
                                          "truth": truth[number * 50:(number + 1) * 50].tolist()}) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["joined"] == 50
        assert metric(registry, "sidecar_quality_accuracy", model="classifier") == pytest.approx(
            accuracy_score(truth, primary))
        assert metric(registry, "sidecar_quality_accuracy", model="classifier~v2") == pytest.approx(
            accuracy_score(truth, shadow))

        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier") as response:
            snapshot = await response.json()
    entry = snapshot["shadows"]["v2"]
    assert entry["agreement"] == pytest.approx(expected)
    assert entry["calls"]["requests"]["ok"] == len(ids)
    assert entry["calls"]["latency_seconds"]["shadow"]["count"] == len(ids)
    assert entry["quality"]["shadow"]["accuracy"] == pytest.approx(accuracy_score(truth, shadow))
    assert entry["output_drift"]["windows_evaluated"] == len(rows) // WINDOW


async def test_grpc_calls_are_mirrored_with_the_model_spec_rewritten_and_regression_differences_measured(
        sidecar: Sidecar, testbed: Any) -> None:
    rows, truth = regressor_batch(300, seed=22)
    async with aiohttp.ClientSession() as session:
        primary = (await direct_rest(session, testbed, "regressor", 1, rows)).reshape(len(rows), -1)[:, 0]
        shadow = (await direct_rest(session, testbed, "regressor", 2, rows)).reshape(len(rows), -1)[:, 0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for start in range(0, len(rows), 50):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "regressor"
            request.model_spec.version.value = 1
            request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows[start:start + 50].astype(np.float32)))
            await stub.Predict(request, timeout=30)
    await eventually(lambda: compared(sidecar, "regressor") >= len(rows), state=lambda: compared(sidecar, "regressor"))
    registry = sidecar.registry
    labels = {"model": "regressor", "shadow": "v2"}
    total = metric(registry, "sidecar_shadow_absolute_difference_sum", **labels)
    assert total == pytest.approx(float(np.sum(np.abs(shadow - primary))), rel=1e-4)
    assert metric(registry, "sidecar_shadow_absolute_difference_count", **labels) == len(rows)
    assert metric(registry, "sidecar_shadow_requests_total", outcome="ok", **labels) == len(rows) // 50
    assert mean_squared_error(truth, shadow) != mean_squared_error(truth, primary)


class BadShadow:
    """A shadow model server on loopback that answers slowly or with errors."""

    def __init__(self, delay: float, status: int) -> None:
        self.delay, self.status = delay, status

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(self.delay)
        return web.json_response({"error": "broken shadow"}, status=self.status)


async def test_a_dead_slow_or_failing_shadow_costs_the_clients_nothing_and_is_counted(
        testbed: Any, tmp_path: Path) -> None:
    runners = []
    ports = {}
    for name, shadow in (("slow", BadShadow(5.0, 200)), ("failing", BadShadow(0.0, 500))):
        app = web.Application()
        app.router.add_post("/{tail:.*}", shadow.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        ports[name] = runner.addresses[0][1]
    settings = base_settings(testbed, tmp_path, shadow_timeout="200ms", shadow_queue_max=5, shadow_concurrency=2,
                             shadow_models={
                                 "classifier": {"rest": f"http://127.0.0.1:{ports['failing']}",
                                                "grpc": f"127.0.0.1:{free_port()}", "name": "broken"},
                                 "regressor": {"rest": f"http://127.0.0.1:{ports['slow']}", "name": "slow"}})
    sidecar = Sidecar(from_mapping(settings))
    await sidecar.start()
    try:
        calls = 40
        async with aiohttp.ClientSession() as session:
            for model, rows in (("classifier", classifier_batch(calls * 5, seed=23)[0]),
                                ("regressor", regressor_batch(calls * 5, seed=24)[0])):
                await asyncio.gather(*(post_through(session, sidecar, model, rows[i * 5:(i + 1) * 5], "")
                                       for i in range(calls)))
        rows = classifier_batch(calls, seed=25)[0].astype(np.float32)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for row in rows:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "classifier"
                request.inputs["features"].CopyFrom(tf.make_tensor_proto(row[None, :]))
                await stub.Predict(request, timeout=30)  # answered: the dead gRPC shadow is not waited for
        registry = sidecar.registry

        def outcomes(model: str, shadow: str) -> dict[str, float]:
            return {outcome: metric(registry, "sidecar_shadow_requests_total", model=model, shadow=shadow,
                                    outcome=outcome) for outcome in ("ok", "error", "timeout", "unreachable",
                                                                     "dropped")}

        await eventually(lambda: sum(outcomes("classifier", "broken").values()) == 2 * calls,
                         state=lambda: outcomes("classifier", "broken"))
        await eventually(lambda: sum(outcomes("regressor", "slow").values()) == calls,
                         state=lambda: outcomes("regressor", "slow"))
        broken = outcomes("classifier", "broken")  # 40 REST calls at once: the queue of 5 overflows
        assert broken["unreachable"] == calls and broken["ok"] == broken["timeout"] == 0
        assert broken["error"] >= 2 and broken["error"] + broken["dropped"] == calls
        slow = outcomes("regressor", "slow")
        assert slow["timeout"] >= 2 and slow["dropped"] >= 1 and slow["ok"] == 0  # the queue of 5 overflowed
        assert slow["timeout"] + slow["dropped"] == calls
        assert metric(registry, "sidecar_requests_total", model="classifier", version="", protocol="rest",
                      method="predict", code="200") == calls
        assert metric(registry, "sidecar_requests_total", model="classifier", version="", protocol="grpc",
                      method="predict", code="OK") == calls
        assert metric(registry, "sidecar_shadow_compared_instances_total", model="classifier", shadow="broken") == 0
    finally:
        await sidecar.stop()
        for runner in runners:
            await runner.cleanup()


async def test_canary_and_stable_versions_get_output_drift_against_the_baseline_and_quality_each(
        testbed: Any, tmp_path: Path) -> None:
    sidecar = Sidecar(from_mapping(base_settings(testbed, tmp_path, models={"classifier": {"by_version": True}})))
    await sidecar.start()
    try:
        registry = sidecar.registry
        stable_rows, stable_truth = classifier_batch(2 * WINDOW, seed=26)
        canary_rows, canary_truth = classifier_batch(2 * WINDOW, seed=27, drift=1.5)  # other inputs, other outputs
        async with aiohttp.ClientSession() as session:
            stable_ids = await post_through(session, sidecar, "classifier", stable_rows, "/labels/stable")
            canary_ids = await post_through(session, sidecar, "classifier", canary_rows, "/labels/canary")
            labels = {"model": "classifier", "version": "classifier@canary"}
            await eventually(lambda: metric(registry, "sidecar_version_output_drift_checks_total", **labels) >= 1)
            assert metric(registry, "sidecar_version_output_drift_detected", baseline="classifier@stable",
                          **labels) == 1
            stable_pred = np.argmax(await direct_rest(session, testbed, "classifier", 1, stable_rows), axis=1)
            canary_pred = np.argmax(await direct_rest(session, testbed, "classifier", 2, canary_rows), axis=1)
            for ids, truth in ((stable_ids, stable_truth), (canary_ids, canary_truth)):
                for number, prediction_id in enumerate(ids):
                    async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback", json={
                            "prediction_id": prediction_id,
                            "truth": truth[number * 50:(number + 1) * 50].tolist()}) as response:
                        assert response.status == 200, await response.text()
            for name, truth in (("classifier@stable", stable_truth), ("classifier@canary", canary_truth)):
                await eventually(lambda name=name, truth=truth: metric(  # held feedback joins once analysed
                    registry, "sidecar_feedback_total", model=name, outcome="joined") == len(truth), timeout=60)
            async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier") as response:
                snapshot = await response.json()
        canary = snapshot["versions"]["classifier@canary"]
        assert canary["baseline"] == "classifier@stable" and canary["drift"] is True
        assert "stable" in canary["baseline_source"]
        assert canary["quality"]["version"]["accuracy"] == pytest.approx(accuracy_score(canary_truth, canary_pred))
        assert canary["quality"]["baseline"]["accuracy"] == pytest.approx(accuracy_score(stable_truth, stable_pred))
    finally:
        await sidecar.stop()
