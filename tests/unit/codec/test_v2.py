"""Open Inference Protocol exchanges through decode_exchange: REST JSON, REST binary data, gRPC contents and raw.

No official V2 client is a test dependency, so gRPC messages are built with the sidecar's wire-compatible
ModelInferRequest/ModelInferResponse (field numbers from kserve's grpc_predict_v2.proto).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from sidecar._proto import v2_pb2
from sidecar.codec import DecodeError, decode_exchange
from sidecar.messages.records import API_V2, PROTOCOL_GRPC

from .support import png_bytes, record, v2_grpc, v2_rest


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def reason_of(rec: Any) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_exchange(rec)
    return caught.value.reason


REQUEST = {
    "id": "42",
    "inputs": [
        {"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]},
        {"name": "ids", "shape": [2], "datatype": "INT64", "data": [7, 8]},
        {"name": "flags", "shape": [2, 1], "datatype": "BOOL", "data": [True, False]},
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello", "wörld"]},
    ],
    "outputs": [{"name": "probs"}],
}
RESPONSE = {"model_name": "m", "model_version": "1", "id": "42",
            "outputs": [{"name": "probs", "shape": [2, 2], "datatype": "FP32", "data": [0.1, 0.9, 0.6, 0.4]}]}


def test_rest_json_inputs_and_outputs() -> None:
    exchange = decode_exchange(v2_rest(REQUEST, RESPONSE))

    assert exchange.method == "infer" and exchange.n_instances == 2
    assert exchange.inputs["features"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert exchange.inputs["features"].dtype == np.float64
    assert exchange.inputs["ids"].dtype == np.int64
    assert exchange.inputs["flags"].tolist() == [[True], [False]]
    assert exchange.inputs["text"].tolist() == ["hello", "wörld"]
    assert exchange.outputs["probs"].tolist() == [[0.1, 0.9], [0.6, 0.4]]


def test_rest_error_response_has_no_outputs() -> None:
    assert decode_exchange(v2_rest(REQUEST, {"error": "model not ready"}, status=400)).outputs == {}
    assert decode_exchange(v2_rest(REQUEST, {"error": "odd"}, status=200)).outputs == {}


def binary_body(header: dict[str, Any], *chunks: bytes) -> bytes:
    return json.dumps(header, ensure_ascii=False).encode() + b"".join(chunks)


def test_rest_binary_data_extension() -> None:
    features = np.arange(6, dtype="<f4").reshape(2, 3)
    text = length_prefixed([b"caf\xc3\xa9", b"\x00\x01"])
    request = binary_body({"inputs": [
        {"name": "features", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        {"name": "naïve", "shape": [2], "datatype": "INT32", "data": [1, 2]},
        {"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(text)}},
    ]}, features.tobytes(), text)
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype="<f8")
    response = binary_body({"model_name": "m", "outputs": [
        {"name": "probs", "shape": [2, 2], "datatype": "FP64", "parameters": {"binary_data_size": 32}}]},
        probs.tobytes())

    exchange = decode_exchange(v2_rest(request, response))

    np.testing.assert_array_equal(exchange.inputs["features"], features)
    assert exchange.inputs["naïve"].tolist() == [1, 2]
    assert exchange.inputs["text"].tolist() == ["café", "\x00\x01"]
    np.testing.assert_array_equal(exchange.outputs["probs"], probs)


@pytest.mark.parametrize(("request_body", "reason"), [
    ({"id": "1"}, "missing"),
    ({"inputs": {"name": "x"}}, "json"),
    ({"inputs": ["x"]}, "json"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "data": [1.0]}]}, "missing"),
    ({"inputs": [{"name": "x", "shape": [1], "data": [1.0]}]}, "missing"),
    ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1.0]}]}, "missing"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "missing"),
    ({"inputs": [{"name": 5, "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "json"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1.0]}]}, "dtype"),
    ({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}, "shape"),
    ({"inputs": [{"name": "x", "shape": [-2], "datatype": "FP32", "data": []}]}, "shape"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "INT8", "data": ["a", "b"]}]}, "dtype"),
    ({"inputs": [{"name": "x", "shape": [0], "datatype": "FP32", "data": []}]}, "empty"),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
                 {"name": "b", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}, "shape"),
    (b"{\"inputs\": [", "json"),
    (b"", "empty"),
])
def test_malformed_rest_requests(request_body: Any, reason: str) -> None:
    assert reason_of(v2_rest(request_body, RESPONSE)) == reason


def test_malformed_rest_binary_bodies() -> None:
    header = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}

    assert reason_of(v2_rest(binary_body(header, b"\x00" * 4), RESPONSE)) == "shape"
    assert reason_of(v2_rest(binary_body(header, b"\x00" * 12), RESPONSE)) == "json"
    assert reason_of(v2_rest(binary_body(REQUEST, b"trailing"), RESPONSE)) == "json"


def test_malformed_rest_responses() -> None:
    assert reason_of(v2_rest(REQUEST, {"model_name": "m"})) == "missing"
    assert reason_of(v2_rest(REQUEST, {"outputs": [{"name": "p", "shape": [3], "datatype": "FP32",
                                                    "data": [1.0, 2.0, 3.0]}]})) == "shape"


def infer_request() -> v2_pb2.ModelInferRequest:
    request = v2_pb2.ModelInferRequest(model_name="m", id="7")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    request.inputs.add(name="n", datatype="INT32", shape=[2]).contents.int_contents.extend([-5, 5])
    request.inputs.add(name="u", datatype="UINT64", shape=[2]).contents.uint64_contents.extend([0, 2**64 - 1])
    request.inputs.add(name="s", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend([b"a", b"b"])
    request.inputs.add(name="b", datatype="BOOL", shape=[2]).contents.bool_contents.extend([True, False])
    return request


def infer_response() -> v2_pb2.ModelInferResponse:
    response = v2_pb2.ModelInferResponse(model_name="m", id="7")
    response.outputs.add(name="y", datatype="FP64", shape=[2]).contents.fp64_contents.extend([0.5, 1.5])
    return response


def test_grpc_typed_contents() -> None:
    exchange = decode_exchange(v2_grpc(infer_request(), infer_response()))

    assert exchange.method == "infer" and exchange.n_instances == 2
    assert exchange.inputs["x"].tolist() == [[1, 2], [3, 4]]
    assert exchange.inputs["n"].tolist() == [-5, 5]
    assert exchange.inputs["u"].dtype == np.float64 and exchange.inputs["u"][1] == float(2**64 - 1)
    assert exchange.inputs["s"].tolist() == [["a"], ["b"]]
    assert exchange.inputs["b"].tolist() == [True, False]
    assert exchange.outputs["y"].tolist() == [0.5, 1.5]


def test_grpc_raw_contents_for_inputs_and_outputs() -> None:
    request = v2_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="half", datatype="FP16", shape=[3, 2])
    request.inputs.add(name="bytes", datatype="BYTES", shape=[3])
    request.inputs.add(name="u8", datatype="UINT8", shape=[3, 1])
    half = np.array([[0.5, -1], [2, 65504], [np.inf, 0]], dtype="<f2")
    request.raw_input_contents.extend([half.tobytes(), length_prefixed([b"x", b"", b"yz"]), bytes([0, 128, 255])])
    response = v2_pb2.ModelInferResponse()
    response.outputs.add(name="score", datatype="FP32", shape=[3])
    response.raw_output_contents.append(np.array([0.1, 0.2, 0.3], dtype="<f4").tobytes())

    exchange = decode_exchange(v2_grpc(request, response))

    np.testing.assert_array_equal(exchange.inputs["half"], half.astype(np.float64))
    assert exchange.inputs["bytes"].tolist() == ["x", "", "yz"]
    assert exchange.inputs["u8"].tolist() == [[0], [128], [255]]
    np.testing.assert_array_equal(exchange.outputs["score"], np.array([0.1, 0.2, 0.3], dtype=np.float32))


def test_a_png_in_a_bytes_tensor_arrives_as_its_exact_bytes_over_rest_and_grpc() -> None:
    image = png_bytes()
    raw = length_prefixed([image, b"label"])
    rest = binary_body({"inputs": [
        {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}, raw)
    with_contents = v2_pb2.ModelInferRequest(model_name="m")
    with_contents.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [image, b"label"])
    with_raw = v2_pb2.ModelInferRequest(model_name="m")
    with_raw.inputs.add(name="image", datatype="BYTES", shape=[2])
    with_raw.raw_input_contents.append(raw)

    for rec in (v2_rest(rest, status=503), v2_grpc(with_contents, status=14), v2_grpc(with_raw, status=14)):
        assert decode_exchange(rec).inputs["image"].tolist() == [image, "label"]


def test_grpc_failed_call_keeps_inputs() -> None:
    exchange = decode_exchange(v2_grpc(infer_request(), b"\x00garbage", status=13))

    assert exchange.outputs == {}
    assert exchange.n_instances == 2


def test_grpc_method_may_be_model_infer() -> None:
    rec = record(PROTOCOL_GRPC, API_V2, "/inference.GRPCInferenceService/ModelInfer",
                 infer_request().SerializeToString(), infer_response().SerializeToString())

    assert decode_exchange(rec).outputs["y"].tolist() == [0.5, 1.5]


def test_malformed_grpc_exchanges() -> None:
    missing_raw = v2_pb2.ModelInferRequest()
    missing_raw.inputs.add(name="a", datatype="FP32", shape=[1])
    missing_raw.inputs.add(name="b", datatype="FP32", shape=[1])
    missing_raw.raw_input_contents.append(b"\x00" * 4)
    unknown = v2_pb2.ModelInferRequest()
    unknown.inputs.add(name="a", datatype="STRING", shape=[1]).contents.bytes_contents.append(b"x")
    short = v2_pb2.ModelInferRequest()
    short.inputs.add(name="a", datatype="INT64", shape=[2]).contents.int64_contents.append(1)
    serialized = infer_request().SerializeToString()

    assert reason_of(v2_grpc(missing_raw, infer_response())) == "missing"
    assert reason_of(v2_grpc(unknown, infer_response())) == "dtype"
    assert reason_of(v2_grpc(short, infer_response())) == "shape"
    assert reason_of(v2_grpc(serialized[:-3], infer_response())) == "protobuf"
    assert reason_of(v2_grpc(serialized, infer_response().SerializeToString()[:-2])) == "protobuf"
    assert reason_of(v2_grpc(v2_pb2.ModelInferRequest(model_name="m"), infer_response())) == "missing"
