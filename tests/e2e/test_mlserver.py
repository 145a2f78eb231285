"""The sidecar in front of a real Open Inference Protocol (V2) server: Seldon's MLServer with its scikit-learn
runtime (own virtualenv, see tests/support/mlserver.py), called with NVIDIA's tritonclient over REST and gRPC.

MLServer serves two scikit-learn classifiers of three classes: `clf-proba` answers `predict_proba` (FP64
probabilities, [n, 3]) and `clf-label` the runtime's default `predict` (an INT64 class id per instance, [n, 1]).
No task is configured for either: the sidecar works it out from what the model server answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc
import tritonclient.http.aio as triton_http
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import confusion_matrix
from tritonclient.grpc import service_pb2, service_pb2_grpc

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from tests.support.mlserver import CLASSES, FEATURES, MLServerProcess, running_mlserver

pytestmark = pytest.mark.slow
REFERENCE = 150
WINDOW = 150
BATCH = 25
INPUT = "input-0"
MODELS = ("clf-proba", "clf-label")
WAIT_SECONDS = 60.0
# tritonclient's aiohttp client posts its JSON as text/plain; MLServer (FastAPI) reads only application/json
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    """One MLServer for the module (training both models and starting it takes a few seconds)."""
    with running_mlserver(tmp_path_factory.mktemp("mlserver")) as server:
        yield server


@pytest.fixture
async def sidecar(mlserver: MLServerProcess, tmp_path: Path) -> AsyncIterator[Sidecar]:
    """A fresh sidecar per test (own state, references and windows) in front of the shared MLServer."""
    settings = from_mapping({
        "upstream_rest": mlserver.rest_url, "upstream_grpc": mlserver.grpc_target,
        "listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
        "state_dir": str(tmp_path / "state"), "reference_size": REFERENCE, "window_size": WINDOW,
        "capture_flush_interval": "0.05", "pending_timeout": "60s",
    })
    running = Sidecar(settings)
    await running.start()
    yield running
    await running.stop()


# ---------------------------------------------------------------------------------------------------------------
# clients


def rest_target(sidecar: Sidecar) -> str:
    return f"127.0.0.1:{sidecar.rest_port}"


def grpc_target(sidecar: Sidecar) -> str:
    return f"127.0.0.1:{sidecar.grpc_port}"


def http_input(rows: np.ndarray) -> triton_http.InferInput:
    tensor = triton_http.InferInput(INPUT, list(rows.shape), "FP64")
    tensor.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float64), binary_data=False)  # MLServer: JSON
    return tensor


def grpc_input(rows: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(INPUT, list(rows.shape), "FP64")
    tensor.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
    return tensor


def rest_body(rows: np.ndarray, request_id: str = "") -> bytes:
    """The JSON body tritonclient's REST client sends for `rows` (MLServer does not read the binary extension)."""
    body, json_size = triton_http.InferenceServerClient.generate_request_body([http_input(rows)],
                                                                              request_id=request_id)
    assert json_size is None  # all JSON: no binary part
    return body if isinstance(body, bytes) else body.encode()


async def post_infer(session: aiohttp.ClientSession, base_url: str, model: str,
                     body: bytes) -> tuple[int, Mapping[str, str], bytes]:
    async with session.post(f"{base_url}/v2/models/{model}/infer", data=body,
                            headers=JSON) as response:
        return response.status, response.headers, await response.read()


async def infer_rest_with_id(session: aiohttp.ClientSession, sidecar: Sidecar, model: str,
                             rows: np.ndarray) -> tuple[str, np.ndarray]:
    """One REST call through the sidecar: (the sidecar's X-Prediction-Id, the model's output tensor)."""
    status, headers, body = await post_infer(session, f"http://{rest_target(sidecar)}", model, rest_body(rows))
    assert status == 200, body
    result = triton_http.InferResult.from_response_body(body)
    return headers["X-Prediction-Id"], output_of(result, model)


def output_of(result: Any, model: str) -> np.ndarray:
    name = "predict_proba" if model == "clf-proba" else "predict"
    array = result.as_numpy(name)
    assert array is not None, f"{model}: no output {name!r} in {result.get_response()}"
    return np.asarray(array)


def infer_request(model: str, rows: np.ndarray, request_id: str = "") -> service_pb2.ModelInferRequest:
    """A ModelInferRequest as tritonclient's gRPC client builds it (raw FP64 contents), for calls that need the
    call's metadata, which tritonclient does not return."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name=INPUT, datatype="FP64", shape=list(rows.shape))
    request.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f8").tobytes())
    return request


async def send_rest(sidecar: Sidecar, model: str, rows: np.ndarray) -> None:
    async with triton_http.InferenceServerClient(rest_target(sidecar)) as client:
        for start in range(0, len(rows), BATCH):
            await client.infer(model, [http_input(rows[start:start + BATCH])], headers=JSON)


async def send_grpc(sidecar: Sidecar, model: str, rows: np.ndarray) -> None:
    async with triton_grpc.InferenceServerClient(grpc_target(sidecar)) as client:
        for start in range(0, len(rows), BATCH):
            await client.infer(model, [grpc_input(rows[start:start + BATCH])], client_timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# what the sidecar reports


async def scrape(session: aiohttp.ClientSession, sidecar: Sidecar) -> dict[tuple[str, frozenset[tuple[str, str]]],
                                                                             float]:
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(sample.name, frozenset(sample.labels.items())): float(sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def metric(session: aiohttp.ClientSession, sidecar: Sidecar, name: str, **labels: str) -> float:
    return (await scrape(session, sidecar)).get((name, frozenset(labels.items())), 0.0)


async def wait_for_metric(session: aiohttp.ClientSession, sidecar: Sidecar, at_least: float, name: str,
                          **labels: str) -> float:
    deadline = time.monotonic() + WAIT_SECONDS
    while (value := await metric(session, sidecar, name, **labels)) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} is {value}, not {at_least} after {WAIT_SECONDS:.0f} s"
        await asyncio.sleep(0.1)
    return value


async def monitor(session: aiohttp.ClientSession, sidecar: Sidecar, model: str) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/{model}") as response:
        assert response.status == 200, await response.text()
        snapshot: dict[str, Any] = await response.json()
        return snapshot


# ---------------------------------------------------------------------------------------------------------------
# byte identity


@pytest.mark.parametrize("model", MODELS)
async def test_rest_answers_through_the_sidecar_are_mlservers_bytes(mlserver: MLServerProcess, sidecar: Sidecar,
                                                                    model: str) -> None:
    body = rest_body(mlserver.X_test[:7], request_id=f"identity-{model}")  # a fixed id: MLServer echoes it
    async with aiohttp.ClientSession() as session:
        direct = await post_infer(session, mlserver.rest_url, model, body)
        through = await post_infer(session, f"http://{rest_target(sidecar)}", model, body)
    assert direct[0] == through[0] == 200
    assert through[2] == direct[2]
    assert through[1]["Content-Type"] == direct[1]["Content-Type"]
    assert json.loads(through[2])["id"] == f"identity-{model}"


@pytest.mark.parametrize("model", MODELS)
async def test_grpc_answers_through_the_sidecar_are_mlservers_messages(mlserver: MLServerProcess, sidecar: Sidecar,
                                                                       model: str) -> None:
    rows = mlserver.X_test[:7]
    answers = []
    for target in (mlserver.grpc_target, grpc_target(sidecar)):
        async with triton_grpc.InferenceServerClient(target) as client:
            result = await client.infer(model, [grpc_input(rows)], request_id=f"identity-{model}",
                                        client_timeout=30)
        answers.append(result.get_response())
    direct, through = answers
    assert through.outputs, through
    for answer in (direct, through):
        answer.ClearField("id")
    assert through == direct
    assert through.SerializeToString(deterministic=True) == direct.SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------------------------------------------
# prediction ids


async def test_rest_answers_carry_a_prediction_id(mlserver: MLServerProcess, sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as session:
        first, _ = await infer_rest_with_id(session, sidecar, "clf-proba", mlserver.X_test[:3])
        second, labels = await infer_rest_with_id(session, sidecar, "clf-label", mlserver.X_test[:3])
    assert first and second and first != second
    assert labels.ravel().tolist() == mlserver.models["clf-label"].predict[:3].tolist()


async def test_grpc_answers_carry_a_prediction_id_in_the_initial_metadata(mlserver: MLServerProcess,
                                                                          sidecar: Sidecar) -> None:
    ids = []
    async with grpc.aio.insecure_channel(grpc_target(sidecar)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model in MODELS:
            call = stub.ModelInfer(infer_request(model, mlserver.X_test[:3]), timeout=30)
            answer = await call
            assert answer.model_name == model
            metadata = dict(await call.initial_metadata())
            ids.append(metadata.get("x-prediction-id"))
        chosen = stub.ModelInfer(infer_request("clf-label", mlserver.X_test[:3]), timeout=30,
                                 metadata=(("x-prediction-id", "order-17"),))
        await chosen
        ids.append(dict(await chosen.initial_metadata()).get("x-prediction-id"))
    assert ids[0] and ids[1] and ids[0] != ids[1]
    assert ids[2] == "order-17"  # a client's own id is kept


# ---------------------------------------------------------------------------------------------------------------
# drift


async def test_a_shifted_window_drifts_and_a_clean_one_does_not(mlserver: MLServerProcess, sidecar: Sidecar) -> None:
    model, shifted_features = "clf-proba", (0, 3)
    checks = {"model": model, "detector": "feature_drift"}
    spread = mlserver.X_train.std(axis=0)
    shifted = mlserver.X_test[:WINDOW].copy()
    for feature in shifted_features:
        shifted[:, feature] += 4 * spread[feature]
    async with aiohttp.ClientSession() as session:
        await send_rest(sidecar, model, mlserver.X_train[:REFERENCE])
        await wait_for_metric(session, sidecar, REFERENCE, "sidecar_reference_instances", model=model)

        await send_grpc(sidecar, model, mlserver.X_train[REFERENCE:REFERENCE + WINDOW])  # the same distribution
        await wait_for_metric(session, sidecar, 1, "sidecar_drift_checks_total", **checks)
        assert await metric(session, sidecar, "sidecar_drift_detected", **checks) == 0
        clean = (await monitor(session, sidecar, model))["detectors"]["feature_drift"]
        assert (clean["drift"], clean["windows_evaluated"], clean["windows_drifted"]) == (False, 1, 0)
        assert not [item["name"] for item in clean["features"] if item["drift"]]

        await send_rest(sidecar, model, shifted)
        await wait_for_metric(session, sidecar, 2, "sidecar_drift_checks_total", **checks)
        assert await metric(session, sidecar, "sidecar_drift_detected", **checks) == 1
        snapshot = await monitor(session, sidecar, model)
    window = snapshot["detectors"]["feature_drift"]
    assert (window["drift"], window["windows_evaluated"], window["windows_drifted"]) == (True, 2, 1)
    drifted = {item["name"] for item in window["features"] if item["drift"]}
    inputs = snapshot["features"]["inputs"]
    assert len(inputs) == FEATURES, inputs
    assert {inputs[feature] for feature in shifted_features} <= drifted
    assert not drifted & {name for index, name in enumerate(inputs) if index not in shifted_features}


# ---------------------------------------------------------------------------------------------------------------
# feedback


@pytest.mark.parametrize("model", MODELS)
async def test_feedback_accuracy_equals_scikit_learns(mlserver: MLServerProcess, sidecar: Sidecar,
                                                      model: str) -> None:
    expected = mlserver.models[model]
    rows, truth = mlserver.X_test, mlserver.y_test
    half = len(rows) // 2
    feedback: list[dict[str, Any]] = []
    answered: list[np.ndarray] = []
    async with aiohttp.ClientSession() as session:
        # REST, first half: the sidecar mints the ids (X-Prediction-Id on each answer)
        for start in range(0, half, BATCH):
            prediction_id, output = await infer_rest_with_id(session, sidecar, model, rows[start:start + BATCH])
            feedback.append({"prediction_id": prediction_id, "truth": truth[start:start + BATCH].tolist()})
            answered.append(output)
        # gRPC, second half, with tritonclient: the client chooses the ids (x-prediction-id metadata)
        async with triton_grpc.InferenceServerClient(grpc_target(sidecar)) as client:
            for start in range(half, len(rows), BATCH):
                prediction_id = f"{model}-grpc-{start}"
                result = await client.infer(model, [grpc_input(rows[start:start + BATCH])], client_timeout=30,
                                            headers={"x-prediction-id": prediction_id})
                feedback.append({"prediction_id": prediction_id, "truth": truth[start:start + BATCH].tolist()})
                answered.append(output_of(result, model))

        # what the client got is what scikit-learn predicts for these rows
        outputs = np.concatenate(answered)
        if model == "clf-proba":
            assert outputs.shape == (len(rows), CLASSES)
            np.testing.assert_allclose(outputs, expected.predict_proba, rtol=0, atol=1e-12)
        else:
            assert outputs.shape == (len(rows), 1) and outputs.dtype == np.int64
            assert outputs.ravel().tolist() == expected.predict.tolist()

        async with session.post(f"http://{rest_target(sidecar)}/v1/feedback", json=feedback) as response:
            answer = await response.json()
            assert response.status == 200, answer
        assert answer["joined"] + answer["pending"] == len(rows) and answer["duplicate"] == 0
        await wait_for_metric(session, sidecar, len(rows), "sidecar_feedback_total", model=model, outcome="joined")

        accuracy = await metric(session, sidecar, "sidecar_quality_accuracy", model=model)
        correct = await metric(session, sidecar, "sidecar_quality_correct_total", model=model)
        quality = (await monitor(session, sidecar, model))["quality"]
    predicted = expected.predict
    assert accuracy == pytest.approx(expected.accuracy, abs=1e-9), (
        f"{model}: sidecar accuracy {accuracy}, scikit-learn {expected.accuracy}; monitor: {quality}")
    assert correct == int((predicted == truth).sum())
    assert quality["task"] == "multiclass"
    assert quality["joined_total"] == len(rows)
    assert quality["accuracy"] == pytest.approx(expected.accuracy, abs=1e-9)
    labels = [int(label) for label in quality["confusion"]["labels"]]
    assert quality["confusion"]["matrix"] == confusion_matrix(truth, predicted, labels=labels).tolist()
