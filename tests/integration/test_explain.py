"""`:explain` through the REST port: KernelSHAP computed by the sidecar in an explainer process, calling the numpy
testbed's models (a linear regressor, whose exact Shapley values are known, and a softmax classifier) through their
own predict route with the model's saved reference as background; failures answer JSON errors and leave
predictions alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shap
from aiohttp import ClientSession

from sidecar.app import Sidecar
from sidecar.testbed import data
from sidecar.worker.reference import model_dir
from tests.support.sidecars import StartSidecar, rest_only, sidecar_factory
from tests.support.testbed import TestbedProcess

REFERENCE = 50


@pytest.fixture
async def start_sidecar(numpy_testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[StartSidecar]:
    async with sidecar_factory(rest_only(numpy_testbed.rest_url, tmp_path / "state"), reference_size=str(REFERENCE),
                               explain_models="regressor,classifier,missing", explain_background=str(REFERENCE),
                               explain_samples="1000") as start:
        yield start


async def post(session: ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def with_reference(session: ClientSession, sidecar: Sidecar, model: str, rows: np.ndarray) -> np.ndarray:
    """Predict `rows` through the sidecar until the analysis has saved the model's reference; the reference."""
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/{model}:predict"
    for start in range(0, len(rows), 10):
        status, _ = await post(session, url, {"instances": rows[start:start + 10].tolist()})
        assert status == 200
    path = model_dir(sidecar.settings.state_path, model) / "reference.npz"
    deadline = time.monotonic() + 30
    while not (path.exists() and (path.parent / "reference.json").exists()):
        assert time.monotonic() < deadline, "no reference saved"
        await asyncio.sleep(0.05)
    with np.load(path) as saved:
        return np.asarray(saved["inputs"], dtype=np.float64)


@pytest.mark.slow
async def test_linear_model_attributions_are_the_exact_shapley_values(start_sidecar: StartSidecar,
                                                                      numpy_testbed: TestbedProcess) -> None:
    sidecar = await start_sidecar()
    async with ClientSession() as session:
        features, _ = data.regressor_batch(REFERENCE, seed=4)
        background = await with_reference(session, sidecar, "regressor", features)
        direct = f"{numpy_testbed.rest_url}/v1/models/regressor:predict"
        _, answer = await post(session, direct, {"instances": np.vstack([np.zeros(4), np.eye(4)]).tolist()})
        values = np.asarray(answer["predictions"], dtype=np.float64).reshape(-1)
        weights, bias = values[1:] - values[0], values[0]

        instances, _ = data.regressor_batch(3, seed=9)
        status, body = await post(session, f"http://127.0.0.1:{sidecar.rest_port}/v1/models/regressor:explain",
                                  {"instances": instances.tolist()})
        assert status == 200, body
        assert body["method"] == "kernel_shap" and body["background"]["rows"] == REFERENCE
        linear = lambda rows: np.asarray(rows, dtype=np.float64) @ weights + bias  # noqa: E731
        theirs = shap.KernelExplainer(linear, background).shap_values(instances.astype(np.float64), nsamples=1000,
                                                                      silent=True)
        exact = weights * (instances - background.mean(axis=0))
        for row, explanation in enumerate(body["explanations"]):
            attributions = np.asarray(explanation["attributions"])
            np.testing.assert_allclose(attributions, exact[row], atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(attributions, theirs[row], atol=1e-4, rtol=1e-4)
            assert attributions.sum() == pytest.approx(explanation["output_value"] - explanation["base_value"],
                                                       abs=1e-4)
        assert body["model_calls"] >= 2


@pytest.mark.slow
async def test_classifier_attributions_sum_to_the_explained_class_minus_its_baseline(
        start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar()
    async with ClientSession() as session:
        features, _ = data.classifier_batch(REFERENCE, seed=2)
        await with_reference(session, sidecar, "classifier", features)
        status, body = await post(session, f"http://127.0.0.1:{sidecar.rest_port}/v1/models/classifier:explain",
                                  {"instances": features[:2].tolist()})
        assert status == 200, body
        for explanation in body["explanations"]:
            assert explanation["explained_output"] == int(np.argmax(explanation["prediction"]))
            assert sum(explanation["attributions"]) == pytest.approx(
                explanation["output_value"] - explanation["base_value"], abs=1e-4)


@pytest.mark.slow
async def test_failing_explanations_answer_json_errors_and_predictions_keep_working(
        start_sidecar: StartSidecar, numpy_testbed: TestbedProcess) -> None:
    sidecar = await start_sidecar(explain_max_model_calls="2")
    base = f"http://127.0.0.1:{sidecar.rest_port}/v1/models"
    async with ClientSession() as session:
        features, _ = data.regressor_batch(REFERENCE, seed=4)
        await with_reference(session, sidecar, "regressor", features)
        status, body = await post(session, f"{base}/regressor:explain", {"instances": features[:1].tolist()})
        assert status == 422 and "explain_max_model_calls" in body["error"]
        status, body = await post(session, f"{base}/missing:explain", {"instances": [[1.0, 2.0]]})
        assert status == 409 and "no reference" in body["error"]
        status, body = await post(session, f"{base}/regressor:explain", {"instances": [["a"]]})
        assert status == 400 and "numbers" in body["error"]
        status, body = await post(session, f"{base}/regressor:predict", {"instances": features[:2].tolist()})
        assert status == 200 and len(body["predictions"]) == 2
        # a model not configured for explanation: `:explain` is forwarded, and the model server answers it
        status, body = await post(session, f"{base}/multi:explain", {"instances": [[1.0, 2.0, 3.0]]})
        assert status == 400 and "Malformed request" in str(body)


@pytest.mark.slow
async def test_a_dead_model_server_fails_the_explanation_with_502(start_sidecar: StartSidecar,
                                                                 tmp_path: Path) -> None:
    from tests.support.helpers import free_port

    sidecar = await start_sidecar(upstream_rest=f"http://127.0.0.1:{free_port()}")
    directory = model_dir(sidecar.settings.state_path, "regressor")
    directory.mkdir(parents=True)
    np.savez(directory / "reference.npz", inputs=np.zeros((5, 4)))
    async with ClientSession() as session:
        status, body = await post(session, f"http://127.0.0.1:{sidecar.rest_port}/v1/models/regressor:explain",
                                  {"instances": [[1.0, 2.0, 3.0, 4.0]]})
        assert status == 502 and "did not answer" in body["error"]


@pytest.mark.slow
@pytest.mark.parametrize("columnar", [False, True], ids=["rows", "columns"])
async def test_a_model_with_several_named_inputs_is_explained_per_feature_in_the_clients_body_shape(
        start_sidecar: StartSidecar, numpy_testbed: TestbedProcess, columnar: bool) -> None:
    sidecar = await start_sidecar(explain_models="pair")
    a, b, _ = data.pair_batch(REFERENCE, seed=4)
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/pair"
    async with ClientSession() as session:
        for start in range(0, REFERENCE, 10):  # named inputs, row format: {"a": [..], "b": ..} per instance
            rows = [{"a": a[i].tolist(), "b": float(b[i])} for i in range(start, start + 10)]
            status, _ = await post(session, f"{url}:predict", {"instances": rows})
            assert status == 200
        path = model_dir(sidecar.settings.state_path, "pair") / "reference.npz"
        deadline = time.monotonic() + 30
        while not (path.exists() and (path.parent / "reference.json").exists()):
            assert time.monotonic() < deadline, "no reference saved"
            await asyncio.sleep(0.05)
        with np.load(path) as saved:
            background = np.asarray(saved["inputs"], dtype=np.float64)  # columns a[0], a[1], b
        direct = f"{numpy_testbed.rest_url}/v1/models/pair:predict"
        _, answer = await post(session, direct, {"inputs": {"a": [[0, 0], [1, 0], [0, 1], [0, 0]],
                                                            "b": [0, 0, 0, 1]}})
        values = np.asarray(answer["outputs"], dtype=np.float64)
        weights, bias = values[1:] - values[0], values[0]

        x_a, x_b, _ = data.pair_batch(3, seed=9)
        if columnar:
            body: dict[str, Any] = {"inputs": {"a": x_a.tolist(), "b": x_b.tolist()}}
        else:
            body = {"instances": [{"a": x_a[i].tolist(), "b": float(x_b[i])} for i in range(3)]}
        status, explained = await post(session, f"{url}:explain", body)
        assert status == 200, explained
        assert explained["features"] == ["a[0]", "a[1]", "b"]  # as the analysis names them
        features = np.column_stack([x_a, x_b]).astype(np.float64)
        exact = weights * (features - background.mean(axis=0))
        for row, explanation in enumerate(explained["explanations"]):
            np.testing.assert_allclose(explanation["attributions"], exact[row], atol=1e-4, rtol=1e-4)
            assert explanation["output_value"] == pytest.approx(features[row] @ weights + bias, abs=1e-4)
        assert explained["model_calls"] >= 2
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/pair") as response:
            monitored = await response.json()
        assert monitored["features"]["inputs"] == explained["features"]


@pytest.mark.slow
async def test_inputs_that_are_not_numbers_are_refused_with_a_400_naming_them(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(explain_models="multi,pair")
    base = f"http://127.0.0.1:{sidecar.rest_port}/v1/models"
    async with ClientSession() as session:
        status, body = await post(session, f"{base}/multi:explain",
                                  {"instances": [{"x": [0.1, 0.2, 0.3], "tag": "alpha"}]})
        assert status == 400 and "input 'tag' holds strings" in body["error"]
        status, body = await post(session, f"{base}/pair:explain",
                                  {"instances": [{"a": [0.1, 0.2], "b": {"b64": "iVBORw0KGgo="}}]})
        assert status == 400 and "input 'b' holds strings" in body["error"]
        status, body = await post(session, f"{base}/pair:explain", {"instances": [1.0], "inputs": [1.0]})
        assert status == 400 and "exactly one of them" in body["error"]
        status, body = await post(session, f"{base}/pair:predict", {"instances": [{"a": [0.1, 0.2], "b": 1.0}]})
        assert status == 200 and len(body["predictions"]) == 1


@pytest.mark.slow
async def test_every_proxy_process_answers_explain_for_the_models_the_sidecar_explains(
        start_sidecar: StartSidecar) -> None:
    from aiohttp import TCPConnector

    from tests.support.helpers import eventually, metric

    sidecar = await start_sidecar(proxy_processes="2")
    base = f"http://127.0.0.1:{sidecar.rest_port}/v1/models"
    features, _ = data.regressor_batch(REFERENCE, seed=4)
    async with ClientSession(connector=TCPConnector(force_close=True)) as session:  # a connection per call
        await with_reference(session, sidecar, "regressor", features)
        answers = [await post(session, f"{base}/regressor:explain", {"instances": features[:1].tolist()})
                   for _ in range(30)]
        for _ in range(30):  # predictions on as many connections: both processes get some
            status, _ = await post(session, f"{base}/regressor:predict", {"instances": features[:1].tolist()})
            assert status == 200
    assert [status for status, _ in answers] == [200] * 30, [body for status, body in answers if status != 200]
    assert all(body["method"] == "kernel_shap" and len(body["explanations"]) == 1 for _, body in answers)
    assert metric(sidecar.registry, "sidecar_explain_requests_total", model="regressor", outcome="ok") == 30
    metrics = sidecar.request_metrics  # the proxy processes report their counts every second
    await eventually(lambda: sum(metrics.requests_by_process().values()) == REFERENCE // 10 + 30, timeout=10)
    served = metrics.requests_by_process()
    assert set(served) == {0, 1} and min(served.values()) > 0  # the kernel spread the connections over both


async def weights_of(session: ClientSession, testbed: TestbedProcess, route: str) -> tuple[np.ndarray, float]:
    """The linear regressor's weights and bias at a route of the testbed (`versions/1`, `labels/canary`)."""
    _, answer = await post(session, f"{testbed.rest_url}/v1/models/regressor/{route}:predict",
                           {"instances": np.vstack([np.zeros(4), np.eye(4)]).tolist()})
    values = np.asarray(answer["predictions"], dtype=np.float64).reshape(-1)
    return values[1:] - values[0], float(values[0])


def assert_exact(body: dict[str, Any], instances: np.ndarray, weights: np.ndarray, background: np.ndarray) -> None:
    """The answer's attributions are the linear model's exact Shapley values against `background`."""
    exact = weights * (instances - background.mean(axis=0))
    for row, explanation in enumerate(body["explanations"]):
        np.testing.assert_allclose(explanation["attributions"], exact[row], atol=1e-4, rtol=1e-4)


async def saved_reference(sidecar: Sidecar, name: str) -> np.ndarray:
    path = model_dir(sidecar.settings.state_path, name) / "reference.npz"
    deadline = time.monotonic() + 30
    while not (path.exists() and (path.parent / "reference.json").exists()):
        assert time.monotonic() < deadline, f"no reference saved for {name}"
        await asyncio.sleep(0.05)
    with np.load(path) as saved:
        return np.asarray(saved["inputs"], dtype=np.float64)


@pytest.mark.slow
async def test_a_version_analysed_apart_is_explained_against_its_own_reference_else_the_models_and_says_which(
        start_sidecar: StartSidecar, numpy_testbed: TestbedProcess, caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.helpers import metric

    sidecar = await start_sidecar(analysis_by_version="true")
    base = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/regressor"
    instances, _ = data.regressor_batch(2, seed=9)
    async with ClientSession() as session:
        status, body = await post(session, f"{base}/versions/2:explain", {"instances": instances.tolist()})
        assert status == 409 and "neither 'regressor@2' nor 'regressor'" in body["error"]

        for route, seed in (("/versions/1", 4), ("", 5)):  # version 1's own reference; the model's (unversioned)
            rows, _ = data.regressor_batch(REFERENCE, seed=seed)
            for start in range(0, REFERENCE, 10):
                status, _ = await post(session, f"{base}{route}:predict",
                                       {"instances": rows[start:start + 10].tolist()})
                assert status == 200
        own, models = await saved_reference(sidecar, "regressor@1"), await saved_reference(sidecar, "regressor")
        assert not np.allclose(own.mean(axis=0), models.mean(axis=0))

        status, body = await post(session, f"{base}/versions/1:explain", {"instances": instances.tolist()})
        assert status == 200, body
        assert body["background"] == {"source": "reference", "reference": "regressor@1", "rows": REFERENCE}
        assert_exact(body, instances, (await weights_of(session, numpy_testbed, "versions/1"))[0], own)

        for _ in range(2):  # version 2 has no reference of its own: the model's, said in the answer, logged once
            status, body = await post(session, f"{base}/versions/2:explain", {"instances": instances.tolist()})
            assert status == 200, body
            background = body["background"]
            assert background["reference"] == "regressor" and background["fallback_from"] == "regressor@2"
            assert "'regressor@2' has no reference yet" in background["fallback"]
            assert_exact(body, instances, (await weights_of(session, numpy_testbed, "versions/2"))[0], models)
        status, _ = await post(session, f"{base}/versions/2:predict", {"instances": instances.tolist()})
        assert status == 200  # version 2 is analysed (too few rows for a reference): it has a drill-down
        admin = f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor"
        async with session.get(f"{admin}/regressor@1") as response:
            assert (await response.json())["explain"]["background"]["reference"] == "regressor@1"
        deadline = time.monotonic() + 30
        while True:
            async with session.get(f"{admin}/regressor@2") as response:
                if response.status == 200:
                    shown = (await response.json())["explain"]["background"]
                    break
            assert time.monotonic() < deadline, "no drill-down of regressor@2"
            await asyncio.sleep(0.1)
        assert shown["reference"] == "regressor" and "'regressor@2' has no reference yet" in shown["fallback"]
    assert metric(sidecar.registry, "sidecar_explain_background_fallbacks_total", model="regressor@2") == 2
    said = [record for record in caplog.records if "'regressor@2' has no reference yet" in record.getMessage()]
    assert len(said) == 1


@pytest.mark.slow
async def test_explain_at_a_version_label_is_answered_by_the_sidecar_through_the_labels_predict_route(
        start_sidecar: StartSidecar, numpy_testbed: TestbedProcess) -> None:
    sidecar = await start_sidecar()
    base = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/regressor"
    async with ClientSession() as session:
        features, _ = data.regressor_batch(REFERENCE, seed=4)
        background = await with_reference(session, sidecar, "regressor", features)
        canary, _ = await weights_of(session, numpy_testbed, "labels/canary")
        stable, _ = await weights_of(session, numpy_testbed, "labels/stable")
        assert not np.allclose(canary, stable)  # the label decides which version's weights the attributions show
        instances, _ = data.regressor_batch(2, seed=9)
        for label, weights in (("canary", canary), ("stable", stable)):
            status, body = await post(session, f"{base}/labels/{label}:explain", {"instances": instances.tolist()})
            assert status == 200, body
            assert body["method"] == "kernel_shap" and body["background"]["reference"] == "regressor"
            assert_exact(body, instances, weights, background)
        status, body = await post(session, f"{base}/labels/nosuch:explain", {"instances": instances.tolist()})
        assert status == 502 and "HTTP 400" in body["error"] and "nosuch" in body["error"]  # the server's refusal
