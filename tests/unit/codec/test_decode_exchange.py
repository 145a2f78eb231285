"""decode_exchange as a whole: dispatch, one array for the same batch whatever the protocol, and robustness.

The property-style tests draw seeded random batches and seeded random corruptions of valid payloads.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2

from sidecar._proto import v2_pb2
from sidecar.codec import DecodeError, Exchange, decode_exchange
from sidecar.messages.records import API_TFSERVING, API_V2, PROTOCOL_GRPC, PROTOCOL_REST, CaptureRecord

from .support import record, tfs_grpc, tfs_rest, v2_grpc, v2_rest

V2_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL",
}


def random_batch(rng: np.random.Generator) -> np.ndarray:
    dtype = list(V2_TYPES)[int(rng.integers(len(V2_TYPES)))]
    shape = (int(rng.integers(1, 6)), *[int(size) for size in rng.integers(1, 4, size=rng.integers(0, 3))])
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f":
        return (rng.normal(size=shape) * 10).astype(dtype)
    return rng.integers(0, 200, size=shape).astype(dtype)


def encodings(batch: np.ndarray) -> dict[str, CaptureRecord]:
    """The same batch as a request in every protocol and encoding the codec reads."""
    typed = tf.make_tensor_proto(batch)
    content = tf.make_tensor_proto(batch)
    if not content.tensor_content:
        content = type(content).FromString(tf.io.serialize_tensor(tf.constant(batch)).numpy())
    grpc_typed, grpc_content = predict_pb2.PredictRequest(), predict_pb2.PredictRequest()
    grpc_typed.inputs["x"].CopyFrom(typed)
    grpc_content.inputs["x"].CopyFrom(content)
    datatype = V2_TYPES[batch.dtype]
    raw = v2_pb2.ModelInferRequest()
    raw.inputs.add(name="x", datatype=datatype, shape=batch.shape)
    raw.raw_input_contents.append(batch.astype(batch.dtype.newbyteorder("<")).tobytes())
    contents = v2_pb2.ModelInferRequest()
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents", "INT64": "int64_contents",
             "UINT8": "uint_contents", "BOOL": "bool_contents"}[datatype]
    getattr(contents.inputs.add(name="x", datatype=datatype, shape=batch.shape).contents, field).extend(
        batch.reshape(-1).tolist())
    v2_json = {"inputs": [{"name": "x", "shape": list(batch.shape), "datatype": datatype,
                           "data": batch.reshape(-1).tolist()}]}
    return {
        "tfs-rest-row": tfs_rest("predict", {"instances": [{"x": row} for row in batch.tolist()]}, status=503),
        "tfs-rest-columnar": tfs_rest("predict", {"inputs": {"x": batch.tolist()}}, status=503),
        "tfs-grpc-typed": tfs_grpc("predict", grpc_typed, status=14),
        "tfs-grpc-content": tfs_grpc("predict", grpc_content, status=14),
        "v2-rest": v2_rest(v2_json, status=503),
        "v2-grpc-raw": v2_grpc(raw, status=14),
        "v2-grpc-contents": v2_grpc(contents, status=14),
    }


@pytest.mark.parametrize("seed", range(12))
def test_the_same_batch_decodes_identically_in_every_protocol(seed: int) -> None:
    batch = random_batch(np.random.default_rng(seed))
    expected = batch.astype(np.float64 if batch.dtype.kind == "f" else np.int64 if batch.dtype.kind in "iu" else bool)

    for name, rec in encodings(batch).items():
        exchange = decode_exchange(rec)
        assert exchange.n_instances == batch.shape[0], name
        assert exchange.inputs["x"].dtype == expected.dtype, name
        np.testing.assert_array_equal(exchange.inputs["x"], expected, err_msg=name)


@pytest.mark.parametrize(("protocol", "api", "method"), [
    (PROTOCOL_REST, API_TFSERVING, "multiinference"),
    (PROTOCOL_REST, API_TFSERVING, "status"),
    (PROTOCOL_REST, API_V2, "predict"),
    (PROTOCOL_GRPC, API_TFSERVING, "GetModelMetadata"),
    (PROTOCOL_GRPC, API_V2, "ModelReady"),
    ("websocket", API_TFSERVING, "predict"),
    (PROTOCOL_REST, "torchserve", "predict"),
])
def test_unknown_routes_are_unsupported(protocol: str, api: str, method: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_exchange(record(protocol, api, method, b"{}", b"{}"))

    assert caught.value.reason == "unsupported"


def valid_records() -> list[CaptureRecord]:
    batch = np.arange(12, dtype=np.float32).reshape(4, 3)
    response = predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(tf.make_tensor_proto(batch[:, :1]))
    grpc_request = predict_pb2.PredictRequest()
    grpc_request.inputs["x"].CopyFrom(tf.make_tensor_proto(batch))
    grpc_request.inputs["s"].CopyFrom(tf.make_tensor_proto(np.array([b"a", b"bb", b"ccc", b""])))
    classify = classification_pb2.ClassificationRequest()
    for value in (1.0, 2.0):
        classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(value)
    classified = classification_pb2.ClassificationResponse()
    for _ in range(2):
        classified.result.classifications.add().classes.add(label="a", score=0.5)
    v2_request = v2_pb2.ModelInferRequest()
    v2_request.inputs.add(name="x", datatype="BYTES", shape=[2])
    v2_request.raw_input_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    return [
        tfs_rest("predict", {"instances": batch.tolist()}, {"predictions": batch[:, 0].tolist()}),
        tfs_rest("predict", {"inputs": {"x": batch.tolist(), "s": [{"b64": "YQ=="}] * 4}}, {"outputs": [1, 2, 3, 4]}),
        tfs_rest("classify", {"context": {"c": "z"}, "examples": [{"x": 1.0}, {"x": [2.0, 3.0]}]},
                 {"results": [[["a", 0.5]], [["a", 0.25]]]}),
        tfs_grpc("predict", grpc_request, response),
        tfs_grpc("classify", classify, classified),
        v2_rest({"inputs": [{"name": "x", "shape": [4, 3], "datatype": "FP32", "data": batch.tolist()}]},
                {"outputs": [{"name": "y", "shape": [4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}),
        v2_grpc(v2_request),
    ]


def corrupt(data: bytes, rng: random.Random) -> bytes:
    mutation = rng.randrange(4)
    position = rng.randrange(len(data))
    if mutation == 0:
        return data[:position]
    if mutation == 1:
        return data[:position] + bytes([rng.randrange(256)]) + data[position + 1:]
    if mutation == 2:
        return data[:position] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))) + data[position:]
    return data[:position] + data[position + rng.randrange(1, 9):]


def assert_contract(exchange: Exchange) -> None:
    for array in (*exchange.inputs.values(), *exchange.outputs.values()):
        assert array.ndim >= 1 and array.shape[0] == exchange.n_instances
        assert array.dtype.kind in "fib" or array.dtype == object
        assert array.dtype.kind != "f" or array.dtype == np.float64
        assert array.dtype.kind != "i" or array.dtype == np.int64
    assert exchange.n_instances > 0


@pytest.mark.parametrize("index", range(7))
def test_corrupted_payloads_raise_only_decode_errors(index: int) -> None:
    original = valid_records()[index]
    assert_contract(decode_exchange(original))
    rng = random.Random(index)
    outcomes = {"decoded": 0, "rejected": 0}

    for attempt in range(400):
        if attempt % 2 == 0 or not original.response:
            damaged = original._replace(request=corrupt(original.request, rng))
        else:
            damaged = original._replace(response=corrupt(original.response, rng))
        try:
            exchange = decode_exchange(damaged)
        except DecodeError:
            outcomes["rejected"] += 1
            continue
        assert_contract(exchange)
        outcomes["decoded"] += 1

    assert outcomes["rejected"] > 0
