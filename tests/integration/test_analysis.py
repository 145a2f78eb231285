"""The analysis pool on real TF Serving payloads: exchanges with the testbed's trained Keras models, made with the
official tensorflow-serving-api client (gRPC) and plain HTTP (REST), captured as bytes and fed to real workers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.analysis.pool import AnalysisPool
from sidecar.feedback.tasks import PredictionRules
from sidecar.messages.records import API_TFSERVING, PROTOCOL_GRPC, PROTOCOL_REST, CaptureRecord
from sidecar.messages.results import StoredPredictions
from sidecar.testbed import data
from sidecar.worker.settings import AnalysisSettings
from tests.support.helpers import eventually, metric
from tests.support.testbed import TestbedProcess

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving.apis.classification_pb2")
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc  # noqa: E402

pytestmark = pytest.mark.slow
STARTUP = 60.0
ANALYSIS = 120.0  # how long a test waits for the workers' results


@pytest.fixture(scope="module")
def stub(testbed: TestbedProcess) -> Iterator[Any]:
    with grpc.insecure_channel(testbed.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def record(prediction_id: str, model: str, protocol: str, method: str, request: bytes, response: bytes,
           status: int) -> CaptureRecord:
    return CaptureRecord(prediction_id, time.time(), model, "", "", protocol, API_TFSERVING, method, request,
                         response, status, 0.0)


def grpc_predict(stub: Any, prediction_id: str, features: np.ndarray) -> CaptureRecord:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(features))
    response = stub.Predict(request, 30)
    return record(prediction_id, "classifier", PROTOCOL_GRPC, "Predict", request.SerializeToString(),
                  response.SerializeToString(), 0)


def grpc_classify(stub: Any, prediction_id: str, features: np.ndarray) -> CaptureRecord:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.model_spec.signature_name = "classification"
    for row in features:
        request.input.example_list.examples.add().features.feature["features"].float_list.value.extend(row.tolist())
    response = stub.Classify(request, 30)
    return record(prediction_id, "classifier", PROTOCOL_GRPC, "Classify", request.SerializeToString(),
                  response.SerializeToString(), 0)


def rest_call(testbed: TestbedProcess, prediction_id: str, model: str, verb: str,
              body: dict[str, Any]) -> CaptureRecord:
    payload = json.dumps(body).encode()
    request = urllib.request.Request(f"{testbed.rest_url}/v1/models/{model}:{verb}", data=payload,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return record(prediction_id, model, PROTOCOL_REST, verb, payload, answer.read(), answer.status)


async def feed(pool: AnalysisPool, records: list[CaptureRecord]) -> None:
    """Capture the records as the proxies do, never faster than the ring has room for."""
    for record_ in records:
        while len(pool) >= pool.max_records // 2:
            await asyncio.sleep(0.01)
        pool.append(record_)
        await asyncio.sleep(0)


async def test_real_predict_traffic_over_rest_and_grpc_drifts_only_when_the_inputs_shift(
        testbed: TestbedProcess, stub: Any, tmp_path: Path) -> None:
    reference = [rest_call(testbed, f"ref-{n}", "classifier", "predict",
                           {"instances": data.classifier_batch(10, seed=n)[0].tolist()}) if n % 2 else
                 grpc_predict(stub, f"ref-{n}", data.classifier_batch(10, seed=n)[0]) for n in range(15)]
    stable = [grpc_predict(stub, f"stable-{n}", data.classifier_batch(10, seed=100 + n)[0]) for n in range(15)]
    shifted = [grpc_predict(stub, f"shifted-{n}", data.classifier_batch(10, seed=200 + n, drift=1.5)[0])
               for n in range(15)]
    registry = CollectorRegistry()
    predictions: list[StoredPredictions] = []
    pool = AnalysisPool(AnalysisSettings(workers=2, reference_size=150, window_size=150), tmp_path, registry,
                        on_predictions=predictions.append, prediction_rules=PredictionRules())
    await pool.start()
    try:
        assert await pool.wait_ready(STARTUP)
        labels = {"model": "classifier", "detector": "feature_drift"}
        await feed(pool, reference + stable)
        await eventually(lambda: metric(registry, "sidecar_drift_checks_total", **labels) == 1, ANALYSIS,
                         state=lambda: pool.monitor("classifier"))
        assert metric(registry, "sidecar_drift_detected", **labels) == 0
        await feed(pool, shifted)
        await eventually(lambda: metric(registry, "sidecar_drift_checks_total", **labels) == 2, ANALYSIS,
                         state=lambda: pool.monitor("classifier"))
        assert metric(registry, "sidecar_drift_detected", **labels) == 1
        assert metric(registry, "sidecar_drift_detected", model="classifier", detector="output_drift") == 1
        assert metric(registry, "sidecar_decode_errors_total", model="classifier", protocol="grpc",
                      reason="protobuf") == 0
        assert metric(registry, "sidecar_analysed_instances_total", model="classifier") == 450
        snapshot = pool.monitor("classifier")
        assert snapshot is not None
        assert snapshot["task"] == "classification"
        assert snapshot["features"]["inputs"] == ["features[0]", "features[1]", "features[2]", "features[3]"]
        issues = snapshot["data_quality"]["issues"]  # shifted inputs leave the reference range; nothing else is wrong
        assert {issue for counts in issues.values() for issue in counts} == {"above_range", "below_range"}
        assert snapshot["features"]["outputs"][0] == "predicted_class"
        drifted = [item["name"] for item in snapshot["detectors"]["feature_drift"]["features"] if item["drift"]]
        assert len(drifted) == 4
        await eventually(lambda: sum(len(p.ids) for p in predictions) == 450, ANALYSIS)
        assert {task for p in predictions for task in p.tasks} == {"multiclass"}
    finally:
        await pool.stop(10.0)


async def test_classify_and_regress_traffic_yields_labelled_and_numeric_predictions(
        testbed: TestbedProcess, stub: Any, tmp_path: Path) -> None:
    features, _ = data.classifier_batch(3, seed=7)
    regress_rows, _ = data.regressor_batch(2, seed=7)
    records = [grpc_classify(stub, "c-1", features),
               rest_call(testbed, "r-1", "regressor", "regress",
                         {"examples": [{"features": row.tolist()} for row in regress_rows]})]
    predictions: list[StoredPredictions] = []
    pool = AnalysisPool(AnalysisSettings(reference_size=10, window_size=10), tmp_path, CollectorRegistry(),
                        on_predictions=predictions.append, prediction_rules=PredictionRules())
    await pool.start()
    try:
        await feed(pool, records)
        await eventually(lambda: len(predictions) == 2, ANALYSIS)
    finally:
        await pool.stop(10.0)
    by_model = {p.model: p for p in predictions}
    classified = by_model["classifier"]  # classify answers label/score pairs: the store keeps the best label
    answered = classification_pb2.ClassificationResponse.FromString(records[0].response)
    best = [max(c.classes, key=lambda item: item.score).label for c in answered.result.classifications]
    assert classified.instances == [0, 1, 2] and set(classified.tasks) == {"multiclass"}
    assert classified.values == best and set(best) <= set(data.CLASS_LABELS)
    regressed = by_model["regressor"]
    assert set(regressed.tasks) == {"regression"}
    expected = data.regressor_target(regress_rows)
    np.testing.assert_allclose(regressed.values, expected, atol=1.0)
    snapshot = pool.monitor("regressor")
    assert snapshot is not None and snapshot["task"] == "regression"
