"""The gRPC server in-process, called through real channels with our wire-compatible messages (the official
client is exercised in tests/integration/test_testbed.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import message  # type: ignore[import-untyped]
from grpc import aio

from sidecar._proto import tf_pb2, tfs_pb2, v2_pb2
from sidecar.testbed import tensors
from sidecar.testbed.grpc import SIGNATURE_DEF_MAP_TYPE_URL, start_grpc_server
from sidecar.testbed.model import ModelRegistry


@pytest.fixture(params=[False, True], ids=["typed", "tensor_content"])
async def channel(request: pytest.FixtureRequest, registry: ModelRegistry) -> AsyncIterator[aio.Channel]:
    server, port = await start_grpc_server(registry, "127.0.0.1", 0, tensor_content=request.param)
    async with aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        chan.tensor_content = request.param  # type: ignore[attr-defined]
        yield chan
    await server.stop(None)


async def unary(channel: aio.Channel, path: str, request: message.Message, response_type: Any,
                **kwargs: Any) -> Any:
    call = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_type.FromString)
    return await call(request, timeout=10, **kwargs)


def predict_request(model: str = "classifier", rows: int = 2) -> tfs_pb2.PredictRequest:
    request = tfs_pb2.PredictRequest(model_spec=tfs_pb2.ModelSpec(name=model))
    request.inputs["features"].CopyFrom(tensors.from_numpy(np.zeros((rows, 4), np.float32)))
    return request


async def test_predict_answers_in_the_configured_encoding(channel: aio.Channel) -> None:
    response = await unary(channel, "/tensorflow.serving.PredictionService/Predict", predict_request(),
                           tfs_pb2.PredictResponse)
    output = response.outputs["probabilities"]
    assert bool(output.tensor_content) == channel.tensor_content  # type: ignore[attr-defined]
    assert tensors.to_numpy(output).shape == (2, 3)
    assert (response.model_spec.name, response.model_spec.version.value) == ("classifier", 2)


async def test_errors_are_grpc_statuses(channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await unary(channel, "/tensorflow.serving.PredictionService/Predict", predict_request("nope"),
                    tfs_pb2.PredictResponse)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Servable not found for request: Latest(nope)"
    bad = predict_request()
    bad.inputs["features"].tensor_content = b"123"
    with pytest.raises(aio.AioRpcError) as caught:
        await unary(channel, "/tensorflow.serving.PredictionService/Predict", bad, tfs_pb2.PredictResponse)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("tensor parsing error: features")


async def test_metadata_packs_the_upstream_signature_def_map_type(channel: aio.Channel) -> None:
    request = tfs_pb2.GetModelMetadataRequest(model_spec=tfs_pb2.ModelSpec(name="multi"),
                                              metadata_field=["signature_def"])
    response = await unary(channel, "/tensorflow.serving.PredictionService/GetModelMetadata", request,
                           tfs_pb2.GetModelMetadataResponse)
    packed = response.metadata["signature_def"]
    assert packed.type_url == SIGNATURE_DEF_MAP_TYPE_URL
    assert set(tfs_pb2.SignatureDefMap.FromString(packed.value).signature_def) == {"serving_default"}


@pytest.mark.parametrize(("request_message", "details"), [
    (tfs_pb2.GetModelMetadataRequest(), "Missing ModelSpec"),
    (tfs_pb2.GetModelMetadataRequest(model_spec=tfs_pb2.ModelSpec(name="multi")),
     "GetModelMetadataRequest must specify at least one metadata_field"),
    (tfs_pb2.GetModelMetadataRequest(model_spec=tfs_pb2.ModelSpec(name="multi"), metadata_field=["x"]),
     "Metadata field x is not supported"),
])
async def test_metadata_request_validation(channel: aio.Channel, request_message: message.Message,
                                           details: str) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await unary(channel, "/tensorflow.serving.PredictionService/GetModelMetadata", request_message,
                    tfs_pb2.GetModelMetadataResponse)
    assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)


async def test_model_status(channel: aio.Channel) -> None:
    request = tfs_pb2.GetModelStatusRequest(model_spec=tfs_pb2.ModelSpec(name="classifier"))
    request.model_spec.version.value = 1
    response = await unary(channel, "/tensorflow.serving.ModelService/GetModelStatus", request,
                           tfs_pb2.GetModelStatusResponse)
    assert [(s.version, s.state) for s in response.model_version_status] == [(1, tfs_pb2.ModelVersionStatus.AVAILABLE)]


async def test_reload_config_is_unimplemented(channel: aio.Channel) -> None:
    call = channel.unary_unary("/tensorflow.serving.ModelService/HandleReloadConfigRequest")
    with pytest.raises(aio.AioRpcError) as caught:
        await call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_classify_and_regress(channel: aio.Channel) -> None:
    example = tf_pb2.Example()
    example.features.feature["features"].float_list.value.extend([5.0, 3.4, 1.5, 0.25])
    source = tfs_pb2.Input(example_list=tfs_pb2.ExampleList(examples=[example]))
    request = tfs_pb2.ClassificationRequest(model_spec=tfs_pb2.ModelSpec(name="classifier"), input=source)
    classified = await unary(channel, "/tensorflow.serving.PredictionService/Classify", request,
                             tfs_pb2.ClassificationResponse)
    assert [c.label for c in classified.result.classifications[0].classes] == ["0", "1", "2"]
    regressed = await unary(channel, "/tensorflow.serving.PredictionService/Regress",
                            tfs_pb2.RegressionRequest(model_spec=tfs_pb2.ModelSpec(name="regressor"), input=source),
                            tfs_pb2.RegressionResponse)
    assert len(regressed.result.regressions) == 1


async def test_v2_health_and_metadata(channel: aio.Channel) -> None:
    base = "/inference.GRPCInferenceService/"
    assert (await unary(channel, base + "ServerLive", v2_pb2.ServerLiveRequest(), v2_pb2.ServerLiveResponse)).live
    assert (await unary(channel, base + "ServerReady", v2_pb2.ServerReadyRequest(), v2_pb2.ServerReadyResponse)).ready
    ready = await unary(channel, base + "ModelReady", v2_pb2.ModelReadyRequest(name="multi", version="1"),
                        v2_pb2.ModelReadyResponse)
    assert ready.ready
    server = await unary(channel, base + "ServerMetadata", v2_pb2.ServerMetadataRequest(),
                         v2_pb2.ServerMetadataResponse)
    assert server.name == "sidecar-testbed"
    meta = await unary(channel, base + "ModelMetadata", v2_pb2.ModelMetadataRequest(name="multi"),
                       v2_pb2.ModelMetadataResponse)
    assert list(meta.versions) == ["1", "2"] and [t.name for t in meta.inputs] == ["tag", "x"]
    with pytest.raises(aio.AioRpcError) as caught:
        await unary(channel, base + "ModelReady", v2_pb2.ModelReadyRequest(name="nope"), v2_pb2.ModelReadyResponse)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_v2_infer_with_contents_answers_with_contents(channel: aio.Channel) -> None:
    request = v2_pb2.ModelInferRequest(model_name="multi")
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    x.contents.fp32_contents.extend([1.0, 2.0, 0.0])
    tag = request.inputs.add(name="tag", datatype="BYTES", shape=[1])
    tag.contents.bytes_contents.append(b"t")
    response = await unary(channel, "/inference.GRPCInferenceService/ModelInfer", request,
                           v2_pb2.ModelInferResponse)
    outputs = {o.name: o for o in response.outputs}
    assert list(outputs["label_bytes"].contents.bytes_contents) == [b"t:high"]
    assert len(outputs["score"].contents.fp32_contents) == 1 and not response.raw_output_contents


async def test_v2_infer_rejects_a_raw_input_count_mismatch(channel: aio.Channel) -> None:
    request = v2_pb2.ModelInferRequest(model_name="classifier", raw_input_contents=[b"", b""])
    request.inputs.add(name="features", datatype="FP32", shape=[0, 4])
    with pytest.raises(aio.AioRpcError) as caught:
        await unary(channel, "/inference.GRPCInferenceService/ModelInfer", request, v2_pb2.ModelInferResponse)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_traceparent_is_echoed_even_on_errors(channel: aio.Channel) -> None:
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=tfs_pb2.PredictResponse.FromString)
    pending = call(predict_request("nope"), timeout=10, metadata=(("traceparent", "00-t"),))
    with pytest.raises(aio.AioRpcError):
        await pending
    assert ("x-testbed-traceparent", "00-t") in tuple(await pending.trailing_metadata())
