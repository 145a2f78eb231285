"""Exporters behind the real REST and gRPC proxies and the testbed: the payload log's two sinks (a JSONL file and
a CloudEvents receiver on loopback), redaction checked with the official tensorflow-serving-api messages, a dead
sink that costs requests nothing, and the Anodot bucket files of the proxied traffic replayed to a recording
Anodot API."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.capture.ring import Drainer, Tee
from sidecar.export.anodot_sink import AnodotExporter
from sidecar.export.payload_log import PayloadLog, payload_log_ring
from sidecar.export.replay import replay_main
from sidecar.export.settings import ExportSettings
from sidecar.proxy.grpc.engine import GrpcProxy
from sidecar.proxy.rest.proxy import RestProxy
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import disabled
from tests.support.testbed import TestbedProcess

PREDICT = "/v1/models/classifier:predict"


@dataclass
class Recorder:
    """A loopback HTTP server recording each POST (lower-case headers, body, query)."""

    reply: Any = None
    received: list[tuple[dict[str, str], bytes, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append((headers, await request.read(), dict(request.query)))
        return web.json_response(self.reply) if self.reply is not None else web.Response(status=202)


@contextlib.asynccontextmanager
async def recording(reply: Any = None) -> AsyncIterator[Recorder]:
    recorder = Recorder(reply)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    recorder.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield recorder
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def proxy_with_payload_log(testbed: TestbedProcess, settings: ExportSettings,
                                 registry: CollectorRegistry) -> AsyncIterator[tuple[str, PayloadLog]]:
    """The composition the sidecar uses: proxy -> Tee -> the payload log's ring -> Drainer -> PayloadLog."""
    log = PayloadLog(settings, registry)
    ring = payload_log_ring(settings)
    drainer = Drainer(ring, log, flush_interval=0.02)
    proxy = RestProxy(ProxySettings(upstream_rest=("127.0.0.1", testbed.rest_port), listen_rest=("127.0.0.1", 0)),
                      capture=Tee(ring).append, metrics=RequestMetrics(), tracing=disabled())
    await log.start()
    drainer.start()
    await proxy.start()
    try:
        yield f"http://127.0.0.1:{proxy.port}", log
    finally:
        await proxy.stop()
        await drainer.stop(flush=True)
        await log.stop(5.0)


def rows(seed: int) -> list[list[float]]:
    return [[seed + 0.1, 0.2, 0.3, 0.4], [0.5, seed + 0.6, 0.7, 0.8]]


async def test_proxied_exchanges_reach_the_file_and_the_cloudevents_receiver(testbed: TestbedProcess,
                                                                             tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    async with recording() as receiver:
        settings = ExportSettings(payload_log_file=str(path), payload_log_url=receiver.url + "/events",
                                  payload_log_flush_interval=0.02, payload_log_senders=1)
        sent: dict[str, tuple[bytes, bytes]] = {}
        async with proxy_with_payload_log(testbed, settings, CollectorRegistry()) as (url, _), \
                aiohttp.ClientSession() as client:
            for seed in range(3):
                body = json.dumps({"instances": rows(seed)}).encode()
                headers = {"Content-Type": "application/json", "X-Prediction-Id": f"it-{seed}"}
                wire = body
                if seed == 2:
                    headers["Content-Encoding"] = "gzip"
                    wire = gzip.compress(body)
                async with client.post(url + PREDICT, data=wire, headers=headers) as response:
                    assert response.status == 200
                    sent[response.headers["X-Prediction-Id"]] = (body, await response.read())
    assert sorted(sent) == ["it-0", "it-1", "it-2"]
    by_id: dict[str, dict[str, tuple[dict[str, str], bytes]]] = {}
    for headers, body, _ in receiver.received:
        by_id.setdefault(headers["ce-id"], {})[headers["ce-type"].rsplit(".", 1)[1]] = (headers, body)
    for prediction_id, (request_body, response_body) in sent.items():
        request_headers, logged_request = by_id[prediction_id]["request"]
        response_headers, logged_response = by_id[prediction_id]["response"]
        assert logged_request == request_body  # gzip request bodies are logged inflated
        assert logged_response == response_body
        assert request_headers["ce-model"] == "classifier" and request_headers["ce-method"] == "predict"
        assert request_headers["ce-specversion"] == "1.0" and request_headers["ce-protocol"] == "rest"
        assert response_headers["ce-status"] == "200"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["id"], line["type"].rsplit(".", 1)[1]) for line in lines] == [
        (f"it-{seed}", kind) for seed in range(3) for kind in ("request", "response")]
    assert lines[0]["data"] == {"instances": rows(0)}
    assert lines[1]["data"] == json.loads(sent["it-0"][1])


async def test_redaction_hides_named_inputs_from_the_log_but_not_from_the_model(testbed: TestbedProcess,
                                                                                tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    settings = ExportSettings(payload_log_file=str(path), payload_log_redact=("features",),
                              payload_log_flush_interval=0.02)
    body = json.dumps({"instances": [{"features": row} for row in rows(7)]}).encode()
    async with proxy_with_payload_log(testbed, settings, CollectorRegistry()) as (url, _), \
            aiohttp.ClientSession() as client, client.post(url + PREDICT, data=body) as response:
        assert response.status == 200
        assert len(json.loads(await response.read())["predictions"]) == 2
    request_line, response_line = (json.loads(line) for line in path.read_text().splitlines())
    assert request_line["data"] == {"instances": [{"features": "[REDACTED]"}, {"features": "[REDACTED]"}]}
    assert request_line["redacted"] is True
    assert "7.1" not in path.read_text()
    assert len(response_line["data"]["predictions"]) == 2


async def test_a_dead_sink_neither_fails_nor_holds_back_requests(testbed: TestbedProcess) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    registry = CollectorRegistry()
    settings = ExportSettings(payload_log_url=dead, payload_log_queue=20, payload_log_batch=5,
                              payload_log_flush_interval=0.01)
    body = json.dumps({"instances": rows(1)}).encode()
    async with proxy_with_payload_log(testbed, settings, registry) as (url, log), aiohttp.ClientSession() as client:
        deepest = 0

        async def call() -> int:
            async with client.post(url + PREDICT, data=body) as response:
                await response.read()
                return response.status

        for _ in range(10):
            statuses = await asyncio.gather(*(call() for _ in range(20)))
            assert statuses == [200] * 20
            deepest = max(deepest, log.sinks[0].queue.depth)
    assert deepest <= 20

    def value(outcome: str) -> float:
        return registry.get_sample_value("sidecar_export_events_total", {"sink": "http", "outcome": outcome}) or 0.0

    assert value("sent") == 0
    assert value("dropped") > 0
    assert value("dropped") + value("failed") == 400


async def test_anodot_buckets_of_proxied_traffic_replay_to_the_api(testbed: TestbedProcess, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics()
    registry.register(metrics)
    exporter = AnodotExporter(ExportSettings(anodot_bucket=3600.0), registry, tmp_path)
    proxy = RestProxy(ProxySettings(upstream_rest=("127.0.0.1", testbed.rest_port), listen_rest=("127.0.0.1", 0)),
                      capture=None, metrics=metrics, tracing=disabled())
    await exporter.start()
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as client:
            for seed in range(4):
                payload = json.dumps({"instances": rows(seed)}).encode()
                async with client.post(f"http://127.0.0.1:{proxy.port}{PREDICT}", data=payload) as response:
                    assert response.status == 200
    finally:
        await proxy.stop()
        await exporter.stop()  # writes the bucket in progress
    (path,) = tmp_path.glob("anodot-*.json")
    samples = json.loads(path.read_text())
    (requests,) = [s for s in samples if s["properties"]["what"] == "requests"]
    assert requests["value"] == 4.0
    assert requests["properties"] == {"what": "requests", "target_type": "counter", "ver": "1",
                                           "model": "classifier", "protocol": "rest", "method": "predict",
                                           "code": "200"}
    (duration,) = [s for s in samples if s["properties"]["what"] == "request_duration_seconds_avg"]
    assert 0 < duration["value"] < 30
    async with recording(reply={"errors": []}) as api:
        code = await asyncio.to_thread(replay_main, [str(tmp_path), "--url", api.url, "--token", "tok"], {})
    assert code == 0
    assert [sample for _, body, _ in api.received for sample in json.loads(body)] == samples



async def test_grpc_exchanges_are_logged_as_protobuf_and_redacted(testbed: TestbedProcess) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    async with recording() as receiver:
        settings = ExportSettings(payload_log_url=receiver.url, payload_log_redact=("features",),
                                  payload_log_flush_interval=0.02)
        log = PayloadLog(settings, CollectorRegistry())
        ring = payload_log_ring(settings)
        drainer = Drainer(ring, log, flush_interval=0.02)
        proxy = GrpcProxy(ProxySettings(upstream_grpc=(testbed.host, testbed.grpc_port),
                                        listen_grpc=("127.0.0.1", 0)),
                          capture=Tee(ring).append, metrics=RequestMetrics(), tracing=disabled())
        await log.start()
        drainer.start()
        await proxy.start()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "classifier"
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(np.array(rows(3), np.float32)))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
                call = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
                answer = await call
                prediction_id = dict(await call.initial_metadata())["x-prediction-id"]
        finally:
            await proxy.stop(grace=1.0)
            await drainer.stop(flush=True)
            await log.stop(5.0)
    events = {headers["ce-type"].rsplit(".", 1)[1]: (headers, body) for headers, body, _ in receiver.received}
    request_headers, request_body = events["request"]
    response_headers, response_body = events["response"]
    assert request_headers["ce-id"] == response_headers["ce-id"] == prediction_id
    assert request_headers["content-type"] == \
        "application/x-protobuf; messagetype=tensorflow.serving.PredictRequest"
    assert (request_headers["ce-protocol"], request_headers["ce-redacted"]) == ("grpc", "true")
    logged = predict_pb2.PredictRequest.FromString(request_body)
    assert list(logged.inputs["features"].string_val) == [b"[REDACTED]"]
    assert [d.size for d in logged.inputs["features"].tensor_shape.dim] == [2, 4]
    assert logged.model_spec.name == "classifier"
    assert response_headers["ce-status"] == "0"
    assert predict_pb2.PredictResponse.FromString(response_body) == answer
