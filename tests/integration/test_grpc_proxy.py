"""The gRPC proxy in front of the testbed (real Keras models behind TF Serving's and KServe's gRPC APIs), called with
the official tensorflow-serving-api stubs: every method answers byte for byte what the model server answers
directly, statuses, trailers and deadlines pass through, and each call is measured, captured and traced.
Every test runs with both engines: the h2 relay (the default) and grpc.aio."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar._proto import v2_pb2
from sidecar.messages.records import CaptureRecord
from sidecar.proxy.grpc.engine import GrpcProxy
from sidecar.proxy.settings import GRPC_ENGINES, ProxySettings
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing, disabled, with_processor
from sidecar.testbed import data
from tests.support.testbed import TestbedProcess

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

BIG = 256 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
TFS = "/tensorflow.serving.PredictionService/"
MODELS = "/tensorflow.serving.ModelService/"
V2 = "/inference.GRPCInferenceService/"


def predict_request(model: str, **inputs: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def examples(features: np.ndarray) -> list[Any]:
    return [tf.train.Example(features=tf.train.Features(feature={
        "features": tf.train.Feature(float_list=tf.train.FloatList(value=row.tolist()))})) for row in features]


def classify_request() -> Any:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.model_spec.version_label = "stable"
    request.input.example_list.examples.extend(examples(data.classifier_batch(4, seed=9)[0]))
    return request


def regress_request() -> Any:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "regressor"
    request.input.example_list.examples.extend(examples(data.regressor_batch(5, seed=4)[0]))
    return request


def metadata_request() -> Any:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "multi"
    return request


def status_request() -> Any:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "regressor"
    return request


def multi_inference_request() -> Any:
    request = inference_pb2.MultiInferenceRequest()
    task = request.tasks.add(method_name="tensorflow/serving/classify")
    task.model_spec.name = "classifier"
    request.input.example_list.examples.extend(examples(data.classifier_batch(2, seed=1)[0]))
    return request


def infer_request() -> v2_pb2.ModelInferRequest:
    features, _ = data.classifier_batch(3, seed=2)
    request = v2_pb2.ModelInferRequest(model_name="classifier", model_version="1", id="r1")
    request.inputs.add(name="features", datatype="FP32", shape=[3, 4])
    request.raw_input_contents.append(features.tobytes())
    return request


# Every unary method of both APIs, with a request built by the official classes (V2: our wire-compatible ones).
EVERY_METHOD: list[tuple[str, Any]] = [
    (TFS + "Predict", lambda: predict_request("classifier", features=data.classifier_batch(8, seed=3)[0])),
    (TFS + "Classify", classify_request),
    (TFS + "Regress", regress_request),
    (TFS + "MultiInference", multi_inference_request),
    (TFS + "GetModelMetadata", metadata_request),
    (MODELS + "GetModelStatus", status_request),
    (MODELS + "HandleReloadConfigRequest", lambda: model_management_pb2.ReloadConfigRequest()),
    (V2 + "ServerLive", lambda: v2_pb2.ServerLiveRequest()),
    (V2 + "ServerReady", lambda: v2_pb2.ServerReadyRequest()),
    (V2 + "ModelReady", lambda: v2_pb2.ModelReadyRequest(name="classifier")),
    (V2 + "ServerMetadata", lambda: v2_pb2.ServerMetadataRequest()),
    (V2 + "ModelMetadata", lambda: v2_pb2.ModelMetadataRequest(name="multi", version="2")),
    (V2 + "ModelInfer", infer_request),
]


@dataclass
class Sidecar:
    proxy: GrpcProxy
    channel: grpc.aio.Channel  # to the sidecar
    direct: grpc.aio.Channel  # to the testbed
    metrics: RequestMetrics
    records: list[CaptureRecord]


async def start_sidecar(testbed: TestbedProcess, engine: str, tracing: Tracing | None = None,
                        upstream_port: int | None = None) -> Sidecar:
    metrics = RequestMetrics()
    records: list[CaptureRecord] = []
    settings = ProxySettings(upstream_grpc=(testbed.host, upstream_port or testbed.grpc_port),
                             listen_grpc=("127.0.0.1", 0), grpc_engine=engine)
    proxy = GrpcProxy(settings, capture=records.append, metrics=metrics, tracing=tracing or disabled())
    await proxy.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}", options=CHANNEL_OPTIONS)
    direct = grpc.aio.insecure_channel(testbed.grpc_target, options=CHANNEL_OPTIONS)
    return Sidecar(proxy, channel, direct, metrics, records)


async def stop_sidecar(sidecar: Sidecar) -> None:
    await sidecar.channel.close()
    await sidecar.direct.close()
    await sidecar.proxy.stop(grace=1.0)


@pytest.fixture(params=GRPC_ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sidecar(testbed: TestbedProcess, engine: str) -> AsyncIterator[Sidecar]:
    running = await start_sidecar(testbed, engine)
    yield running
    await stop_sidecar(running)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


async def outcome(channel: grpc.aio.Channel, path: str, request: bytes, **kwargs: Any) -> tuple[Any, ...]:
    """(status name, response bytes or details, trailing metadata without the sidecar's and testbed's own)."""
    call = channel.unary_unary(path)(request, timeout=60, **kwargs)
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return error.code().name, error.details(), tuple(error.trailing_metadata())
    return "OK", response, tuple(await call.trailing_metadata())


# --- every method, byte for byte ------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "build"), EVERY_METHOD, ids=[path.rsplit("/", 1)[1] for path, _ in EVERY_METHOD])
async def test_every_method_answers_byte_identically_through_the_sidecar(sidecar: Sidecar, path: str,
                                                                         build: Any) -> None:
    request = build().SerializeToString()
    direct = await outcome(sidecar.direct, path, request)
    proxied = await outcome(sidecar.channel, path, request)
    assert proxied == direct
    if path.endswith(("MultiInference", "HandleReloadConfigRequest")):
        assert direct[0] == "UNIMPLEMENTED"  # the testbed does not implement these; the status passes through
    else:
        assert direct[0] == "OK" and direct[1]


async def test_official_stubs_call_every_tf_serving_method_through_the_sidecar(sidecar: Sidecar) -> None:
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(sidecar.channel)
    models = model_service_pb2_grpc.ModelServiceStub(sidecar.channel)
    features, _ = data.classifier_batch(6, seed=11)
    predicted = await prediction.Predict(predict_request("classifier", features=features), timeout=30)
    assert tf.make_ndarray(predicted.outputs["probabilities"]).shape == (6, 3)
    assert (predicted.model_spec.name, predicted.model_spec.version.value) == ("classifier", 2)
    classified = await prediction.Classify(classify_request(), timeout=30)
    assert classified.model_spec.version.value == 1 and len(classified.result.classifications) == 4
    regressed = await prediction.Regress(regress_request(), timeout=30)
    assert len(regressed.result.regressions) == 5
    metadata = await prediction.GetModelMetadata(metadata_request(), timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert metadata.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def["serving_default"].inputs) == {"x", "tag"}
    status = await models.GetModelStatus(status_request(), timeout=30)
    assert [s.version for s in status.model_version_status] == [2, 1]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prediction.MultiInference(multi_inference_request(), timeout=30)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_the_blocking_official_client_works_through_the_sidecar(sidecar: Sidecar) -> None:
    def call() -> Any:
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.proxy.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_request("classifier", features=np.zeros((2, 4), np.float32))
            return stub.Predict.with_call(request, 30, metadata=[("x-prediction-id", "blocking-1")])

    response, call_info = await asyncio.to_thread(call)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (2, 3)
    assert ("x-prediction-id", "blocking-1") in tuple(call_info.initial_metadata())


# --- errors, deadlines, sizes ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "code", "message"), [
    (lambda r: setattr(r.model_spec, "name", "nope"), "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    (lambda r: setattr(r.model_spec, "version_label", "nope"), "INVALID_ARGUMENT",
     "Unrecognized servable version label: nope"),
    (lambda r: r.inputs["features"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 5), np.float32))),
     "INVALID_ARGUMENT", "input tensor features has shape [2,5]"),
])
async def test_tf_serving_error_statuses_pass_through_with_their_details(sidecar: Sidecar, change: Any, code: str,
                                                                         message: str) -> None:
    request = predict_request("classifier", features=np.zeros((2, 4), np.float32))
    change(request)
    direct = await outcome(sidecar.direct, TFS + "Predict", request.SerializeToString())
    proxied = await outcome(sidecar.channel, TFS + "Predict", request.SerializeToString())
    assert proxied == direct
    assert proxied[0] == code and message in proxied[1]
    spec = request.model_spec
    assert sidecar.metrics.requests[(spec.name, spec.version_label, "grpc", "predict", code)] == 1


async def test_the_client_deadline_passes_through_to_the_model_server(sidecar: Sidecar) -> None:
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(sidecar.channel)
    request = predict_request("classifier", features=np.zeros((1, 4), np.float32))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prediction.Predict(request, timeout=0.5, metadata=[("x-testbed-delay-ms", "5000")])
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    answered = await prediction.Predict(request, timeout=10, metadata=[("x-testbed-delay-ms", "200")])
    assert answered.model_spec.name == "classifier"


async def test_a_stopped_model_server_is_unavailable_through_the_official_stub(testbed: TestbedProcess,
                                                                               engine: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = int(sock.getsockname()[1])
    sidecar = await start_sidecar(testbed, engine, upstream_port=closed)
    try:
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(sidecar.channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await prediction.Predict(predict_request("classifier", features=np.zeros((1, 4), np.float32)), timeout=20)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "sidecar: upstream model server" in (caught.value.details() or "")
    finally:
        await stop_sidecar(sidecar)


async def test_messages_over_ten_mebibytes_pass_both_ways(sidecar: Sidecar) -> None:
    features = np.random.default_rng(0).normal(size=(700_000, 4)).astype(np.float32)
    request = predict_request("classifier", features=features).SerializeToString()
    assert len(request) > 10 * 1024 * 1024
    direct = await outcome(sidecar.direct, TFS + "Predict", request)
    proxied = await outcome(sidecar.channel, TFS + "Predict", request)
    assert proxied[0] == "OK" and len(proxied[1]) > 4 * 1024 * 1024
    assert proxied == direct


# --- trace context, metrics, capture --------------------------------------------------------------------------

async def test_the_model_server_receives_the_sidecars_client_span(testbed: TestbedProcess, engine: str,
                                                                  spans: InMemorySpanExporter) -> None:
    sidecar = await start_sidecar(testbed, engine, tracing=with_processor(SimpleSpanProcessor(spans)))
    try:
        incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        request = predict_request("classifier", features=np.zeros((1, 4), np.float32)).SerializeToString()
        status, _, trailing = await outcome(sidecar.channel, TFS + "Predict", request,
                                            metadata=[("traceparent", incoming)])
    finally:
        await stop_sidecar(sidecar)
    assert status == "OK"
    finished = {span.kind: span for span in spans.get_finished_spans()}
    client, server = finished[SpanKind.CLIENT], finished[SpanKind.SERVER]
    assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    echoed = dict(trailing)["x-testbed-traceparent"]
    assert echoed == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{client.context.span_id:016x}-01"
    assert (server.attributes or {})["sidecar.model"] == "classifier"


async def test_without_tracing_the_clients_traceparent_reaches_the_model_server(sidecar: Sidecar) -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = predict_request("classifier", features=np.zeros((1, 4), np.float32)).SerializeToString()
    _, _, trailing = await outcome(sidecar.channel, TFS + "Predict", request, metadata=[("traceparent", incoming)])
    assert dict(trailing)["x-testbed-traceparent"] == incoming


async def test_metrics_count_a_known_number_of_calls(sidecar: Sidecar) -> None:
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(sidecar.channel)
    models = model_service_pb2_grpc.ModelServiceStub(sidecar.channel)
    for _ in range(5):
        await prediction.Predict(predict_request("classifier", features=np.zeros((1, 4), np.float32)), timeout=30)
    for _ in range(2):
        await models.GetModelStatus(status_request(), timeout=30)
    await outcome(sidecar.channel, V2 + "ModelInfer", infer_request().SerializeToString())
    assert sidecar.metrics.requests == {
        ("classifier", "", "grpc", "predict", "OK"): 5,
        ("regressor", "", "grpc", "status", "OK"): 2,
        ("classifier", "1", "grpc", "infer", "OK"): 1,  # the V2 request names version 1
    }
    assert sum(sidecar.metrics.duration.series[("classifier", "", "grpc", "predict")][:-1]) == 5


async def test_capture_records_hold_the_exchanged_bytes(sidecar: Sidecar) -> None:
    predict = predict_request("classifier", features=data.classifier_batch(4, seed=5)[0])
    predict.model_spec.version.value = 1
    predict_bytes = predict.SerializeToString()
    _, predicted, _ = await outcome(sidecar.channel, TFS + "Predict", predict_bytes,
                                    metadata=[("x-request-id", "req-42")])
    infer_bytes = infer_request().SerializeToString()
    _, inferred, _ = await outcome(sidecar.channel, V2 + "ModelInfer", infer_bytes)
    await outcome(sidecar.channel, TFS + "Classify", classify_request().SerializeToString())
    await outcome(sidecar.channel, TFS + "GetModelMetadata", metadata_request().SerializeToString())
    first, second, third = sidecar.records
    assert (first.prediction_id, first.model, first.version, first.api, first.method, first.status) == (
        "req-42", "classifier", "1", "tfserving", "predict", 0)
    assert (first.request, first.response) == (predict_bytes, predicted)
    assert (second.api, second.method, second.model, second.version) == ("v2", "infer", "classifier", "1")
    assert (second.request, second.response) == (infer_bytes, inferred)
    assert (third.method, third.label) == ("classify", "stable")
    assert v2_pb2.ModelInferResponse.FromString(second.response).id == "r1"
