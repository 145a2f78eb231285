"""End to end through the sidecar and the testbed: a stable stream raises no drift, a shifted one does,
injected outliers are counted, gRPC traffic is analysed like REST, and the proxy keeps serving throughout."""

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
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from sidecar.testbed.data import classifier_batch, regressor_batch
from tests.support.helpers import eventually, metric

pytestmark = pytest.mark.slow
REFERENCE = 300
WINDOW = 300


@pytest.fixture
async def sidecar(testbed: Any, tmp_path: Path) -> AsyncIterator[Sidecar]:
    settings = from_mapping({
        "upstream_rest": testbed.rest_url, "upstream_grpc": f"127.0.0.1:{testbed.grpc_port}",
        "listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
        "state_dir": str(tmp_path), "reference_size": REFERENCE, "window_size": WINDOW,
    })
    running = Sidecar(settings)
    await running.start()
    yield running
    await running.stop()


async def post_rows(session: aiohttp.ClientSession, sidecar: Sidecar, model: str, rows: np.ndarray,
                    version: str = "") -> None:
    for start in range(0, len(rows), 50):
        async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/models/{model}{version}:predict",
                                json={"instances": rows[start:start + 50].tolist()}) as response:
            assert response.status == 200, await response.text()


async def test_stable_traffic_raises_no_drift_and_shifted_traffic_does(sidecar: Sidecar) -> None:
    registry = sidecar.registry
    checks = {"model": "classifier", "detector": "feature_drift"}
    async with aiohttp.ClientSession() as session:
        stable, _ = classifier_batch(REFERENCE + 2 * WINDOW, seed=1)
        await post_rows(session, sidecar, "classifier", stable)
        await eventually(lambda: metric(registry, "sidecar_drift_checks_total", **checks) >= 2)
        assert metric(registry, "sidecar_reference_instances", model="classifier") == REFERENCE
        assert metric(registry, "sidecar_drift_detected", **checks) == 0

        shifted, _ = classifier_batch(WINDOW, seed=2, drift=1.0)
        await post_rows(session, sidecar, "classifier", shifted)
        await eventually(lambda: metric(registry, "sidecar_drift_checks_total", **checks) >= 3)
        assert metric(registry, "sidecar_drift_detected", **checks) == 1

        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier") as response:
            assert response.status == 200
            snapshot = await response.json()
    assert snapshot["model"] == "classifier"
    assert "feature_drift" in str(snapshot)


async def test_injected_outliers_are_counted(sidecar: Sidecar) -> None:
    registry = sidecar.registry
    labels = {"model": "classifier", "detector": "mahalanobis"}
    async with aiohttp.ClientSession() as session:
        reference, _ = classifier_batch(REFERENCE, seed=3)
        await post_rows(session, sidecar, "classifier", reference)
        await eventually(lambda: metric(registry, "sidecar_reference_instances", model="classifier") >= REFERENCE)
        await asyncio.sleep(0.5)
        before = metric(registry, "sidecar_outliers_total", **labels)
        normal, _ = classifier_batch(200, seed=4)
        extreme = normal[:20] * 0 + 50.0
        await post_rows(session, sidecar, "classifier", np.concatenate([normal, extreme]))
        await eventually(lambda: metric(registry, "sidecar_analysed_instances_total", model="classifier")
                         >= REFERENCE + 220)
        await eventually(lambda: metric(registry, "sidecar_outliers_total", **labels) - before >= 20, timeout=10)
    counted = metric(registry, "sidecar_outliers_total", **labels) - before
    assert 20 <= counted <= 20 + 10  # the 20 injected ones, plus at most a few false positives at 1% FPR


async def test_grpc_predictions_are_analysed_like_rest(sidecar: Sidecar) -> None:
    features, _ = regressor_batch(64, seed=5)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "regressor"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(features))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(3):
            await stub.Predict(request, timeout=30)
    await eventually(lambda: metric(sidecar.registry, "sidecar_reference_instances", model="regressor") >= 192)
    assert metric(sidecar.registry, "sidecar_requests_total", model="regressor", version="", protocol="grpc",
                  method="predict", code="OK") == 3


async def test_a_malformed_request_gets_the_model_servers_400_and_analysis_goes_on(sidecar: Sidecar) -> None:
    registry = sidecar.registry
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/models/classifier:predict",
                                data=b'{"instances": [[1, 2, 3, 4]') as response:
            assert response.status == 400
        good, _ = classifier_batch(10, seed=6)
        await post_rows(session, sidecar, "classifier", good)
    await eventually(lambda: metric(registry, "sidecar_reference_instances", model="classifier") >= 10)


async def test_versions_are_labelled_and_analysed_apart_when_configured(testbed: Any, tmp_path: Path) -> None:
    settings = from_mapping({
        "upstream_rest": testbed.rest_url, "upstream_grpc": f"127.0.0.1:{testbed.grpc_port}",
        "listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
        "state_dir": str(tmp_path), "reference_size": REFERENCE, "window_size": WINDOW,
        "models": {"classifier": {"by_version": True}},
    })
    sidecar = Sidecar(settings)
    await sidecar.start()
    try:
        registry = sidecar.registry
        async with aiohttp.ClientSession() as session:
            stable, _ = classifier_batch(REFERENCE + WINDOW, seed=7)
            canary, _ = classifier_batch(REFERENCE, seed=8)
            canary_shifted, _ = classifier_batch(WINDOW, seed=9, drift=1.0)
            await post_rows(session, sidecar, "classifier", stable, "/versions/1")
            await post_rows(session, sidecar, "classifier", np.concatenate([canary, canary_shifted]),
                            "/labels/canary")
            for name in ("classifier@1", "classifier@canary"):
                checks = {"model": name, "detector": "feature_drift"}
                await eventually(lambda checks=checks: metric(registry, "sidecar_drift_checks_total", **checks) >= 1)
            async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier@canary") as got:
                assert got.status == 200
                assert (await got.json())["model"] == "classifier@canary"
        assert metric(registry, "sidecar_drift_detected", model="classifier@1", detector="feature_drift") == 0
        assert metric(registry, "sidecar_drift_detected", model="classifier@canary", detector="feature_drift") == 1
        labels = {"model": "classifier", "protocol": "rest", "method": "predict", "code": "200"}
        assert metric(registry, "sidecar_requests_total", version="1", **labels) == (REFERENCE + WINDOW) // 50
        assert metric(registry, "sidecar_requests_total", version="canary", **labels) == (REFERENCE + WINDOW) // 50
    finally:
        await sidecar.stop()
