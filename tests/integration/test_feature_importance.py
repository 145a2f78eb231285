"""Which features drive the model now: a real sidecar in front of the numpy testbed explains a sample of recent
traffic and of the reference every interval (KernelSHAP in its explainer processes) and shows both in
/v1/monitor/{model} and /metrics; nothing of it runs when it is off, a model with no new rows is not explained again,
and one that cannot be explained is decided once (in front of a loopback Open Inference Protocol server for a model
server without the TF Serving REST predict route)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from sidecar.app import Sidecar
from sidecar.testbed import data
from sidecar.worker.recent import RECENT_FILE
from sidecar.worker.reference import model_dir
from tests.support.rest_upstreams import Received, Reply, ScriptedUpstream, json_reply
from tests.support.sidecars import StartSidecar, rest_only, sidecar_factory
from tests.support.testbed import TestbedProcess

pytest.importorskip("shap")

REFERENCE = 60


@pytest.fixture
async def start_sidecar(numpy_testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[StartSidecar]:
    async with sidecar_factory(rest_only(numpy_testbed.rest_url, tmp_path / "state"), reference_size=str(REFERENCE),
                               window_size="40", result_interval="0", explain_background="30",
                               explain_samples="100") as start:
        yield start


async def predict(session: ClientSession, sidecar: Sidecar, rows: np.ndarray) -> None:
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/regressor:predict"
    for start in range(0, len(rows), 10):
        async with session.post(url, json={"instances": rows[start:start + 10].tolist()}) as response:
            assert response.status == 200


async def monitor(session: ClientSession, sidecar: Sidecar) -> dict[str, Any]:
    """The regressor's drill-down; {} while the analysis has not reported the model yet."""
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/regressor") as response:
        if response.status == 404:
            return {}
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


async def metrics(session: ClientSession, sidecar: Sidecar) -> str:
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
        return await response.text()


async def wait_for(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def shifted_rows(count: int, seed: int) -> np.ndarray:
    """Regressor inputs whose first feature (weight 1.5) is spread four times wider; the others as before."""
    features, _ = data.regressor_batch(count, seed=seed)
    features[:, 0] *= 4.0
    return features


@pytest.mark.slow
async def test_a_shift_in_a_feature_that_matters_raises_its_recent_importance(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(importance_enabled="true", importance_interval="1", importance_rows="20")
    async with ClientSession() as session:
        reference, _ = data.regressor_batch(REFERENCE, seed=4)
        await predict(session, sidecar, reference)
        await predict(session, sidecar, shifted_rows(80, seed=5))

        async def explained() -> dict[str, Any] | None:
            section = (await monitor(session, sidecar)).get("feature_importance")
            ready = section is not None and section["outcome"] == "ok" and section["rows"]["recent"] == 20
            return section if ready and section["drifted"] else None

        section = await wait_for(explained, "the feature importance of the shifted traffic")
        by_feature = {item["feature"]: item for item in section["features"]}
        assert len(by_feature) == 4 and section["rows"]["reference"] == 20 and section["model_calls"] >= 2
        first = next(name for name in by_feature if name.endswith("0]") or name.endswith("_0") or name == "0")
        assert by_feature[first]["recent"] > 2.5 * by_feature[first]["reference"]
        for name, item in by_feature.items():
            if name != first:  # the other features' importance stays near the reference's
                assert item["recent"] < 2.0 * item["reference"] + 0.1, (name, item)
        assert section["features"][0]["feature"] == first  # ranked: the most important first
        drifted = {item["feature"]: item for item in section["drifted"]}
        assert first in drifted and drifted[first]["importance_recent"] == by_feature[first]["recent"]

        text = await metrics(session, sidecar)
        assert f'sidecar_feature_importance{{feature="{first}",model="regressor",sample="recent"}}' in text
        calls = [line for line in text.splitlines()
                 if line.startswith('sidecar_feature_importance_model_calls_total{model="regressor"}')]
        assert calls and float(calls[0].rsplit(" ", 1)[1]) >= section["model_calls"]


@pytest.mark.slow
async def test_the_budget_of_model_calls_stops_a_run_and_says_so(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(importance_enabled="true", importance_interval="1",
                                  importance_max_model_calls="1")
    async with ClientSession() as session:
        reference, _ = data.regressor_batch(REFERENCE, seed=4)
        await predict(session, sidecar, reference)
        await predict(session, sidecar, shifted_rows(20, seed=5))

        async def refused() -> dict[str, Any] | None:
            section = (await monitor(session, sidecar)).get("feature_importance")
            return section if section is not None and section["outcome"] == "422" else None

        section = await wait_for(refused, "a run stopped by the budget")
        assert "importance_max_model_calls" in section["error"] and "features" not in section
        text = await metrics(session, sidecar)
        runs = [line for line in text.splitlines() if line.startswith("sidecar_feature_importance_runs_total{")
                and 'outcome="422"' in line]
        calls = [line for line in text.splitlines()
                 if line.startswith('sidecar_feature_importance_model_calls_total{model="regressor"}')]
        assert runs and calls
        assert float(calls[0].rsplit(" ", 1)[1]) <= float(runs[0].rsplit(" ", 1)[1])  # at most 1 call per run


@pytest.mark.slow
async def test_nothing_runs_when_it_is_off(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(explain_models="regressor")
    assert sidecar.importance is None
    async with ClientSession() as session:
        reference, _ = data.regressor_batch(REFERENCE, seed=4)
        await predict(session, sidecar, reference)
        await predict(session, sidecar, shifted_rows(80, seed=5))
        directory = model_dir(sidecar.settings.state_path, "regressor")

        async def analysed() -> bool:
            return (await monitor(session, sidecar)).get("analysed_instances", 0) >= REFERENCE + 80
        await wait_for(analysed, "the traffic analysed")
        await asyncio.sleep(2.5)  # the workers tick every second: time enough to have saved a sample
        assert (directory / "reference.npz").exists() and not (directory / RECENT_FILE).exists()
        assert "feature_importance" not in await monitor(session, sidecar)
        text = await metrics(session, sidecar)
        assert "sidecar_feature_importance_runs_total{" not in text
        assert "sidecar_feature_importance{" not in text


async def section_of(session: ClientSession, sidecar: Sidecar, name: str, outcome: str) -> dict[str, Any] | None:
    """`name`'s feature importance once its outcome is `outcome`."""
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/{name}") as response:
        if response.status != 200:
            return None
        section = (await response.json()).get("feature_importance")
    return section if section is not None and section["outcome"] == outcome else None


@pytest.mark.slow
async def test_a_version_analysed_apart_is_explained_through_its_own_route(start_sidecar: StartSidecar) -> None:
    sidecar = await start_sidecar(importance_enabled="true", importance_interval="1", importance_rows="10",
                                  analysis_by_version="true")
    async with ClientSession() as session:
        rows, _ = data.regressor_batch(REFERENCE + 20, seed=4)
        for route in ("versions/1", "labels/canary"):
            url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/regressor/{route}:predict"
            for start in range(0, len(rows), 10):
                async with session.post(url, json={"instances": rows[start:start + 10].tolist()}) as response:
                    assert response.status == 200
        for name in ("regressor@1", "regressor@canary"):
            section = await wait_for(lambda name=name: section_of(session, sidecar, name, "ok"),  # type: ignore[misc]
                                     f"the feature importance of {name}")
            assert len(section["features"]) == 4 and section["model_calls"] >= 2
        text = await metrics(session, sidecar)
        assert 'sidecar_feature_importance_runs_total{model="regressor@canary",outcome="ok"}' in text


@pytest.mark.slow
async def test_a_shadow_is_explained_at_its_own_address_and_one_without_rest_says_why(
        numpy_testbed: TestbedProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import grpc

    from sidecar._proto import tf_pb2, tfs_pb2

    testbed_grpc = f"127.0.0.1:{numpy_testbed.grpc_port}"
    # the shadow is the regressor's version 1 (fitted on other rows than version 2, which clients get)
    shadows = {"regressor": {"rest": numpy_testbed.rest_url, "version": "1", "name": "v1"},
               "classifier": {"grpc": testbed_grpc, "name": "grpconly"}}
    settings = {**rest_only(numpy_testbed.rest_url, tmp_path / "state"), "listen_grpc": "127.0.0.1:0",
                "upstream_grpc": testbed_grpc}
    async with sidecar_factory(settings, reference_size=str(REFERENCE), window_size="40", result_interval="0",
                               explain_background="30", explain_samples="100", importance_enabled="true",
                               importance_interval="1", importance_rows="10", shadow_models=shadows) as start:
        sidecar = await start()
        async with ClientSession() as session:
            rows, _ = data.regressor_batch(REFERENCE + 20, seed=4)
            await predict(session, sidecar, rows)
            features, _ = data.classifier_batch(10, seed=3)
            request = tfs_pb2.PredictRequest()
            request.model_spec.name = "classifier"
            tensor = request.inputs["features"]
            tensor.dtype = tf_pb2.DT_FLOAT
            tensor.tensor_shape.dim.add().size = 10
            tensor.tensor_shape.dim.add().size = 4
            tensor.float_val.extend(features.reshape(-1).tolist())
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
                call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                           request_serializer=lambda message: message.SerializeToString(),
                                           response_deserializer=lambda data: data)
                for _ in range(8):
                    await call(request, timeout=30)

            shadow = await wait_for(lambda: section_of(session, sidecar, "regressor~v1", "ok"),
                                    "the feature importance of the regressor's shadow")
            assert len(shadow["features"]) == 4 and shadow["model_calls"] >= 2
            refused = await wait_for(lambda: section_of(session, sidecar, "classifier~grpconly", "unsupported"),
                                     "the gRPC-only shadow's reason", timeout=90)
            assert "no REST address" in refused["error"] and "features" not in refused
            async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/regressor") as response:
                primary = await response.json()
            assert primary["shadows"]["v1"]["feature_importance"]["outcome"] == "ok"
            # the same reference rows and background, another model: the attributions differ (a little)
            ours = {item["feature"]: item["reference"] for item in primary["feature_importance"]["features"]}
            theirs = {item["feature"]: item["reference"] for item in shadow["features"]}
            assert set(ours) == set(theirs)
            assert not np.allclose([ours[name] for name in ours], [theirs[name] for name in ours], rtol=1e-7, atol=0)
            await asyncio.sleep(2.5)  # more intervals: the decision is counted once, logged once
            text = await metrics(session, sidecar)
            runs = [line for line in text.splitlines() if line.startswith(
                'sidecar_feature_importance_runs_total{model="classifier~grpconly",outcome="unsupported"}')]
            assert runs and float(runs[0].rsplit(" ", 1)[1]) == 1
            said = [record for record in caplog.records if "grpconly" in record.getMessage()
                    and "no REST address" in record.getMessage()]
            assert len(said) == 1


@pytest.mark.slow
async def test_a_model_whose_inputs_are_not_numbers_is_decided_unsupported_once(
        start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture) -> None:
    from sidecar.explain.kernel import ImportanceJob

    sidecar = await start_sidecar(importance_enabled="true", importance_interval="1", importance_rows="10")
    assert sidecar.explainer is not None
    jobs: list[str] = []  # the importance jobs handed to the explainer processes, by model
    run = sidecar.explainer.run

    async def counted(function: Any, job: Any) -> dict[str, Any]:
        if isinstance(job, ImportanceJob):
            jobs.append(job.model)
        return await run(function, job)
    sidecar.explainer.run = counted  # type: ignore[method-assign]
    async with ClientSession() as session:
        x, tags, _ = data.multi_batch(REFERENCE + 20, seed=4)
        url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/multi:predict"
        for start in range(0, len(x), 10):
            rows = [{"x": x[i].tolist(), "tag": tags[i].decode()} for i in range(start, start + 10)]
            async with session.post(url, json={"instances": rows}) as response:
                assert response.status == 200
        section = await wait_for(lambda: section_of(session, sidecar, "multi", "unsupported"),
                                 "the multi model decided unsupported", timeout=90)
        assert "input 'tag' holds strings" in section["error"] and "features" not in section
        await asyncio.sleep(3.5)  # more intervals: counted once, logged once, no more runs started
        text = await metrics(session, sidecar)
    runs = [line for line in text.splitlines()
            if line.startswith('sidecar_feature_importance_runs_total{model="multi",outcome="unsupported"}')]
    assert runs and float(runs[0].rsplit(" ", 1)[1]) == 1
    assert 'outcome="400"' not in text
    assert 'sidecar_feature_importance_model_calls_total{model="multi"}' not in text
    assert jobs.count("multi") == 1
    said = [record for record in caplog.records if "multi" in record.getMessage()
            and "holds strings" in record.getMessage()]
    assert len(said) == 1


def metric(text: str, prefix: str) -> float:
    """The value of the one sample of `text` starting with `prefix` (0 when there is none)."""
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) <= 1, lines
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


@pytest.mark.slow
async def test_a_model_with_no_new_rows_is_not_explained_again_until_new_rows_come(
        start_sidecar: StartSidecar, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="sidecar.explain.importance")
    sidecar = await start_sidecar(importance_enabled="true", importance_interval="1", importance_rows="10")
    calls_metric = 'sidecar_feature_importance_model_calls_total{model="regressor"}'
    skipped_metric = 'sidecar_feature_importance_skipped_unchanged_total{model="regressor"}'
    async with ClientSession() as session:
        reference, _ = data.regressor_batch(REFERENCE + 20, seed=4)
        await predict(session, sidecar, reference)

        async def skipped() -> dict[str, Any] | None:
            section = await section_of(session, sidecar, "regressor", "ok")
            return section if section is not None and "skipped_unchanged" in section else None

        async def calls_reach(least: float) -> float | None:  # /metrics is cached for a second: poll it
            value = metric(await metrics(session, sidecar), calls_metric)
            return value if value >= least else None

        first = await wait_for(skipped, "an interval skipped for unchanged rows")
        assert first["model_calls"] > 0
        calls = await wait_for(lambda: calls_reach(first["model_calls"]), "the first run's model calls counted")
        await asyncio.sleep(3.5)  # three more intervals on the same rows: no run, no model call
        later = await section_of(session, sidecar, "regressor", "ok")
        assert later is not None and later["computed"] == first["computed"]
        assert later["features"] == first["features"] and later["recent_saved"] == first["recent_saved"]
        assert later["skipped_unchanged"]["intervals"] >= first["skipped_unchanged"]["intervals"] + 2
        assert later["skipped_unchanged"]["since"] == first["skipped_unchanged"]["since"]
        assert "recent_saved" in later["skipped_unchanged"]["why"]
        text = await metrics(session, sidecar)
        assert metric(text, calls_metric) == calls
        assert metric(text, skipped_metric) >= later["skipped_unchanged"]["intervals"]

        await predict(session, sidecar, shifted_rows(20, seed=5))  # new rows: explained again, on them

        async def explained_again() -> dict[str, Any] | None:
            section = await section_of(session, sidecar, "regressor", "ok")
            return section if section is not None and section["recent_saved"] > first["recent_saved"] else None

        again = await wait_for(explained_again, "the feature importance of the new rows")
        assert again["computed"] > first["computed"] and again["features"] != first["features"]
        await wait_for(lambda: calls_reach(calls + 1), "the new run's model calls counted")
    said = [record for record in caplog.records if "regressor" in record.getMessage()
            and "have not changed" in record.getMessage()]
    assert len(said) == 1


V2_WEIGHTS = np.array([1.5, -2.0, 0.5, 1.0])


def open_inference_only(request: Received) -> Reply:
    """A model server that speaks only the Open Inference Protocol (as MLServer does): model `wine` answers
    `/v2/models/wine/infer` (a linear model) and its metadata; anything else is FastAPI's 404."""
    if request.method == "GET" and request.target == "/v2/models/wine":
        return json_reply(json.dumps({"name": "wine", "platform": "", "inputs": [
            {"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}], "outputs": [
            {"name": "output-0", "datatype": "FP64", "shape": [-1, 1]}]}).encode())
    if request.method == "POST" and request.target == "/v2/models/wine/infer":
        tensor = json.loads(request.body)["inputs"][0]
        rows = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        return json_reply(json.dumps({"model_name": "wine", "outputs": [{
            "name": "output-0", "datatype": "FP64", "shape": [len(rows), 1],
            "data": (rows @ V2_WEIGHTS).tolist()}]}).encode())
    return json_reply(b'{"detail":"Not Found"}', 404)


@pytest.mark.slow
async def test_a_model_server_without_the_tf_serving_predict_route_is_decided_unsupported_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with ScriptedUpstream(open_inference_only) as upstream, sidecar_factory(
            rest_only(f"http://127.0.0.1:{upstream.port}", tmp_path / "state"), reference_size=str(REFERENCE),
            window_size="40", result_interval="0", explain_background="30", explain_samples="100",
            importance_enabled="true", importance_interval="1", importance_rows="10",
            explain_models="wine") as start:
        sidecar = await start()
        predict_url = f"http://127.0.0.1:{upstream.port}/v1/models/wine:predict"
        async with ClientSession() as session:
            rows, _ = data.regressor_batch(REFERENCE + 20, seed=4)
            url = f"http://127.0.0.1:{sidecar.rest_port}/v2/models/wine/infer"
            for start_row in range(0, len(rows), 10):
                chunk = rows[start_row:start_row + 10].astype(np.float64)
                body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(chunk.shape),
                                    "data": chunk.reshape(-1).tolist()}]}
                async with session.post(url, json=body) as response:
                    assert response.status == 200
            section = await wait_for(lambda: section_of(session, sidecar, "wine", "unsupported"),
                                     "the V2-only model decided unsupported", timeout=90)
            assert f"POST {predict_url} with HTTP 404" in section["error"]
            assert "TF Serving REST API (/v1/models/{m}:predict) only" in section["error"]
            assert "features" not in section
            await asyncio.sleep(3.5)  # more intervals: no more runs, no more predict calls, counted once
            text = await metrics(session, sidecar)
            asked = [request.target for request in upstream.received if request.target.endswith(":predict")]
            assert asked == ["/v1/models/wine:predict"]  # the first run's first call, and none after it
            assert metric(text, 'sidecar_feature_importance_runs_total{model="wine",outcome="unsupported"}') == 1
            assert 'sidecar_feature_importance_runs_total{model="wine",outcome="502"}' not in text

            explain_url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/wine:explain"
            async with session.post(explain_url, json={"instances": rows[:1].tolist()}) as response:
                assert response.status == 502
                answer = await response.json()
            assert f"POST {predict_url} with HTTP 404" in answer["error"] and "TF Serving REST API" in answer["error"]
    said = [record for record in caplog.records if "wine" in record.getMessage()
            and "TF Serving REST API" in record.getMessage()]
    assert len(said) == 1
