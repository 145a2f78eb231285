"""`--proxy-processes`: more processes serve the same ports; the main process sees everything they forward, their
metrics add up in one `/metrics`, feedback sent to any of them joins, and one that dies is started again."""

from __future__ import annotations

import asyncio
import os
import signal
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
from sidecar.config import ConfigError, from_mapping
from sidecar.testbed.data import classifier_batch
from tests.support.helpers import eventually, metric

pytestmark = pytest.mark.slow
ROWS = classifier_batch(10, seed=1)[0].tolist()


@pytest.fixture
async def sidecar(testbed: Any, tmp_path: Path) -> AsyncIterator[Sidecar]:
    settings = from_mapping({
        "upstream_rest": testbed.rest_url, "upstream_grpc": f"127.0.0.1:{testbed.grpc_port}",
        "listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
        "state_dir": str(tmp_path), "reference_size": 50, "window_size": 50, "proxy_processes": 2,
    })
    running = Sidecar(settings)
    await running.start()
    yield running
    await running.stop()


async def predict_on_new_connections(sidecar: Sidecar, count: int) -> list[str]:
    """`count` predictions, each on its own connection (the kernel spreads connections, not requests)."""
    ids = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(count):
            async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/models/classifier:predict",
                                    json={"instances": ROWS}) as response:
                assert response.status == 200
                ids.append(response.headers["X-Prediction-Id"])
    return ids


async def test_requests_spread_over_the_processes_and_are_all_counted_and_analysed(sidecar: Sidecar) -> None:
    await predict_on_new_connections(sidecar, 120)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array(ROWS, np.float32)))
    for _ in range(20):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    metrics = sidecar.request_metrics
    await eventually(lambda: sum(metrics.requests_by_process().values()) == 140, timeout=10)
    served = metrics.requests_by_process()
    assert set(served) == {0, 1} and min(served.values()) > 0  # both processes served some
    labels = {"model": "classifier", "version": "", "method": "predict"}
    assert metric(sidecar.registry, "sidecar_requests_total", protocol="rest", code="200", **labels) == 120
    assert metric(sidecar.registry, "sidecar_requests_total", protocol="grpc", code="OK", **labels) == 20
    assert metric(sidecar.registry, "sidecar_request_duration_seconds_count", protocol="rest", **labels) == 120
    await eventually(lambda: metric(sidecar.registry, "sidecar_analysed_instances_total", model="classifier")
                     == 140 * len(ROWS), timeout=60)


async def test_feedback_sent_to_any_process_joins(sidecar: Sidecar) -> None:
    ids = await predict_on_new_connections(sidecar, 30)
    await eventually(lambda: metric(sidecar.registry, "sidecar_analysed_instances_total", model="classifier")
                     >= 30 * len(ROWS), timeout=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for prediction_id in ids:
            async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback",
                                    json={"prediction_id": prediction_id, "truth": [0] * len(ROWS)}) as response:
                assert response.status == 200, await response.text()
    await eventually(lambda: metric(sidecar.registry, "sidecar_feedback_total", model="classifier",
                                    outcome="joined") == 30 * len(ROWS), timeout=30)


async def test_a_proxy_process_that_dies_is_started_again_and_counts_never_go_down(sidecar: Sidecar) -> None:
    await predict_on_new_connections(sidecar, 40)
    metrics = sidecar.request_metrics
    await eventually(lambda: sum(metrics.requests_by_process().values()) == 40, timeout=10)
    assert sidecar.fleet is not None
    [child] = sidecar.fleet.pids
    await eventually(lambda: Path(f"/proc/{child}/comm").read_text().strip() == "sidecar-proxy-1", timeout=30)
    os.kill(child, signal.SIGKILL)
    await eventually(lambda: sidecar.fleet is not None and sidecar.fleet.pids not in ([], [child]), timeout=30)
    await asyncio.sleep(1.5)  # the new process binds its ports
    await predict_on_new_connections(sidecar, 40)
    await eventually(lambda: metric(sidecar.registry, "sidecar_requests_total", model="classifier", version="",
                                    protocol="rest", method="predict", code="200") == 80, timeout=10)


def test_more_than_one_process_needs_the_h2_engine() -> None:
    with pytest.raises(ConfigError, match="proxy_processes"):
        from_mapping({"proxy_processes": 2, "grpc_engine": "aio"})
