"""What the analysis decides for a model, where it took it from, and that the operator can see and undo it: the
model server's signature (TF Serving metadata over REST and gRPC, the Open Inference Protocol's model metadata), the
decisions in /v1/monitor and the metrics, encoded images through the proxy, and the reference reset call."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from sidecar.testbed.data import classifier_batch
from sidecar.testbed.images import encode, gaussian_noise, scenes
from tests.support.helpers import eventually, metric
from tests.support.rest_upstreams import Received, Reply, ScriptedUpstream, json_reply, response

pytestmark = pytest.mark.slow
REFERENCE = 200
TOKEN = "s3cret-admin"


async def started(tmp_path: Path, **settings: Any) -> Sidecar:
    base = {"listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
            "state_dir": str(tmp_path), "reference_size": REFERENCE, "window_size": REFERENCE}
    running = Sidecar(from_mapping({**base, **settings}))
    await running.start()
    return running


@pytest.fixture
async def sidecar(testbed: Any, tmp_path: Path) -> AsyncIterator[Sidecar]:
    running = await started(tmp_path, upstream_rest=testbed.rest_url, upstream_grpc=testbed.grpc_target,
                            admin_token=TOKEN)
    yield running
    await running.stop()


async def monitor(session: aiohttp.ClientSession, sidecar: Sidecar, model: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"} if sidecar.settings.telemetry.admin_token else {}
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/{model}", headers=headers) as answer:
        assert answer.status == 200
        return await answer.json()  # type: ignore[no-any-return]


async def complete_reference(session: aiohttp.ClientSession, sidecar: Sidecar, path: str, body: Any,
                             model: str, count: int = 1) -> dict[str, Any]:
    for _ in range(count):
        async with session.post(f"http://127.0.0.1:{sidecar.rest_port}{path}", json=body) as answer:
            assert answer.status == 200, await answer.text()
    await eventually(lambda: metric(sidecar.registry, "sidecar_detector_active", model=model,
                                    detector="feature_drift") == 1)
    return await monitor(session, sidecar, model)


async def test_types_come_from_the_tf_serving_signature(sidecar: Sidecar) -> None:
    rows, _ = classifier_batch(REFERENCE, seed=1)
    async with aiohttp.ClientSession() as session:
        snapshot = await complete_reference(session, sidecar, "/v1/models/classifier:predict",
                                            {"instances": rows.tolist()}, "classifier")
    decisions = snapshot["decisions"]
    assert decisions["signature"] == {"source": "tfserving rest", "error": None}
    [(name, entry)] = decisions["inputs"].items()
    assert name != "input"  # the unnamed REST input took the signature's name
    assert entry["declared"] == "float" and entry["kinds"] == {"numeric": 4} and entry["sources"] == {"signature": 4}
    assert decisions["task"] == {"value": "classification", "source": "data", "class_ids": False}
    assert metric(sidecar.registry, "sidecar_model_signature", model="classifier", source="tfserving rest") == 1
    assert metric(sidecar.registry, "sidecar_input_columns", model="classifier", kind="numeric",
                  source="signature") == 4
    assert metric(sidecar.registry, "sidecar_detector_active", model="classifier", detector="mahalanobis") == 1
    assert metric(sidecar.registry, "sidecar_detector_active", model="classifier", detector="mmd") == 0


async def test_a_grpc_only_sidecar_asks_the_open_inference_protocol_metadata_over_grpc(testbed: Any,
                                                                                       tmp_path: Path) -> None:
    import grpc

    from sidecar._proto import v2_pb2

    running = await started(tmp_path, listen_rest="off", upstream_rest="off", upstream_grpc=testbed.grpc_target)
    try:
        rows, _ = classifier_batch(REFERENCE, seed=2)
        request = v2_pb2.ModelInferRequest(model_name="classifier")
        tensor = request.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
        tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=v2_pb2.ModelInferRequest.SerializeToString,
                                        response_deserializer=v2_pb2.ModelInferResponse.FromString)
            await infer(request, timeout=30)
        await eventually(lambda: metric(running.registry, "sidecar_model_signature", model="classifier",
                                        source="v2 grpc") == 1)
    finally:
        await running.stop()


async def test_encoded_png_images_are_decoded_and_analysed_whole(tmp_path: Path) -> None:
    def answer(request: Received) -> Reply:
        if not request.target.endswith(":predict"):
            return Reply(response(404, b'{"error": "no metadata here"}'))
        count = len(json.loads(request.body)["instances"])
        return json_reply(json.dumps({"predictions": [[0.5, 0.5]] * count}).encode())

    def body(images: np.ndarray) -> dict[str, Any]:
        return {"instances": [{"b64": base64.b64encode(png).decode()} for png in encode(images, "PNG")]}

    async with ScriptedUpstream(answer) as upstream:
        running = await started(tmp_path, upstream_rest=f"http://127.0.0.1:{upstream.port}", listen_grpc="off",
                                upstream_grpc="off")
        try:
            async with aiohttp.ClientSession() as session:
                path = "/v1/models/vision:predict"
                snapshot = await complete_reference(session, running, path, body(scenes(REFERENCE, seed=1)), "vision")
                decisions = snapshot["decisions"]
                assert decisions["signature"]["source"] is None
                assert "HTTP 404" in decisions["signature"]["error"]
                assert decisions["inputs"]["input"]["encoding"] == "image"
                assert decisions["inputs"]["input"]["columns"] == 32 * 32 * 3
                assert decisions["layout"]["mode"] == "projected"
                assert metric(running.registry, "sidecar_input_projected", model="vision") == 1
                checks = {"model": "vision", "detector": "feature_drift"}
                async with session.post(f"http://127.0.0.1:{running.rest_port}{path}",
                                        json=body(scenes(REFERENCE, seed=2))) as answered:
                    assert answered.status == 200
                await eventually(lambda: metric(running.registry, "sidecar_drift_checks_total", **checks) == 1)
                assert metric(running.registry, "sidecar_drift_detected", **checks) == 0
                noisy = gaussian_noise(scenes(REFERENCE, seed=3), 0.08)
                async with session.post(f"http://127.0.0.1:{running.rest_port}{path}", json=body(noisy)) as answered:
                    assert answered.status == 200
                await eventually(lambda: metric(running.registry, "sidecar_drift_checks_total", **checks) == 2)
                assert metric(running.registry, "sidecar_drift_detected", **checks) == 1
        finally:
            await running.stop()


async def test_a_reference_reset_needs_the_admin_token_and_collects_again(sidecar: Sidecar, testbed: Any,
                                                                         tmp_path: Path) -> None:
    rows, _ = classifier_batch(REFERENCE, seed=4)
    admin = f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier/reference"
    async with aiohttp.ClientSession() as session:
        await complete_reference(session, sidecar, "/v1/models/classifier:predict", {"instances": rows.tolist()},
                                 "classifier")
        async with session.delete(admin) as answer:
            assert answer.status == 401
        async with session.delete(admin, headers={"Authorization": "Bearer wrong"}) as answer:
            assert answer.status == 401
        async with session.delete(admin.replace("/classifier/", "/nosuch/"),
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 404  # a typo creates no model
        async with session.delete(admin, headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 202
        await eventually(lambda: metric(sidecar.registry, "sidecar_reference_instances", model="classifier") == 0)
        assert sidecar.registry.get_sample_value("sidecar_detector_active",
                                                 {"model": "classifier", "detector": "feature_drift"}) is None
        snapshot = await monitor(session, sidecar, "classifier")
        assert snapshot["reference"]["complete"] is False and snapshot["decisions"] is None
        await complete_reference(session, sidecar, "/v1/models/classifier:predict", {"instances": rows.tolist()},
                                 "classifier")
    without_token = await started(tmp_path / "other", upstream_rest=testbed.rest_url,
                                  upstream_grpc=testbed.grpc_target)
    try:
        async with aiohttp.ClientSession() as session, session.delete(
                f"http://127.0.0.1:{without_token.admin_port}/v1/monitor/classifier/reference",
                headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            assert answer.status == 403
            assert "admin_token" in (await answer.json())["error"]
    finally:
        await without_token.stop()
