"""TF Serving gRPC exchanges built with the official tensorflow-serving-api messages, decoded by the sidecar."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, predict_pb2, regression_pb2

from sidecar.codec import DecodeError, decode_exchange

from .support import png_bytes, tfs_grpc

BFLOAT16 = np.dtype(tf.bfloat16.as_numpy_dtype)


def predict_request(**inputs: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "model"
    request.model_spec.signature_name = "serving_default"
    for name, values in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return request


def predict_response(**outputs: Any) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    for name, values in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(values))
    return response


def example(**features: list[float] | list[int] | list[bytes]) -> tf.train.Example:
    feature = {}
    for name, values in features.items():
        if isinstance(values[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif isinstance(values[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def reason_of(method: str, request: object, response: object = None, status: int = 0) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_exchange(tfs_grpc(method, request, response, status=status))
    return caught.value.reason


def test_predict_with_inputs_of_every_dtype() -> None:
    rng = np.random.default_rng(7)
    inputs: dict[str, np.ndarray] = {
        "f16": rng.normal(size=(3, 2)).astype(np.float16),
        "bf16": rng.normal(size=(3, 2)).astype(BFLOAT16),
        "f32": rng.normal(size=(3, 4)).astype(np.float32),
        "f64": rng.normal(size=(3,)),
        "i8": rng.integers(-128, 127, size=(3, 2), dtype=np.int8),
        "i16": rng.integers(-3000, 3000, size=(3, 2), dtype=np.int16),
        "i32": rng.integers(-2**31, 2**31 - 1, size=(3, 2), dtype=np.int32),
        "i64": np.array([-2**63, 0, 2**63 - 1], dtype=np.int64),
        "u8": rng.integers(0, 255, size=(3, 5), dtype=np.uint8),
        "u16": rng.integers(0, 65535, size=(3, 1), dtype=np.uint16),
        "u32": np.array([0, 7, 2**32 - 1], dtype=np.uint32),
        "u64": np.array([0, 7, 2**64 - 1], dtype=np.uint64),
        "flag": np.array([True, False, True]),
        "text": np.array([b"caf\xc3\xa9", b"", b"\xff"], dtype=object),
    }
    outputs: dict[str, np.ndarray] = {"probs": rng.random((3, 2)).astype(np.float32),
                                      "label": np.array([1, 0, 1], dtype=np.int64)}

    exchange = decode_exchange(tfs_grpc("predict", predict_request(**inputs), predict_response(**outputs)))

    assert exchange.n_instances == 3 and exchange.method == "predict"
    for name, values in inputs.items():
        decoded = exchange.inputs[name]
        if name == "text":
            assert decoded.tolist() == ["café", "", b"\xff"]
            continue
        kind = "f" if values.dtype == BFLOAT16 or values.dtype.kind == "f" or values.dtype == np.uint64 else \
            values.dtype.kind
        assert decoded.dtype == {"f": np.float64, "i": np.int64, "u": np.int64, "b": np.bool_}[kind], name
        np.testing.assert_array_equal(decoded, values.astype(np.float64 if kind == "f" else decoded.dtype), name)
    np.testing.assert_array_equal(exchange.outputs["probs"], outputs["probs"].astype(np.float64))
    assert exchange.outputs["label"].tolist() == [1, 0, 1]


def test_a_png_in_string_val_arrives_as_its_exact_bytes() -> None:
    image = png_bytes()
    request = predict_request(image_bytes=np.array([image, image[:16], b"caption"], dtype=object))
    assert list(request.inputs["image_bytes"].string_val) == [image, image[:16], b"caption"]

    response = predict_response(thumb=np.array([image, b"", b"\x00"], dtype=object))

    exchange = decode_exchange(tfs_grpc("predict", request, response))

    assert exchange.inputs["image_bytes"].tolist() == [image, image[:16], "caption"]
    assert exchange.outputs["thumb"].tolist() == [image, "", "\x00"]


def test_predict_response_in_typed_fields_with_broadcast() -> None:
    response = predict_pb2.PredictResponse()
    response.outputs["scores"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[0.25],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2),
                                                             tensor_shape_pb2.TensorShapeProto.Dim(size=3)])))

    exchange = decode_exchange(tfs_grpc("predict", predict_request(x=np.ones((2, 1), np.float32)), response))

    assert exchange.outputs["scores"].tolist() == [[0.25] * 3] * 2


def test_scalar_input_is_one_instance() -> None:
    exchange = decode_exchange(tfs_grpc("predict", predict_request(x=np.float32(4.0)),
                                        predict_response(y=np.float32(8.0))))

    assert exchange.n_instances == 1
    assert exchange.inputs["x"].tolist() == [4.0]
    assert exchange.outputs["y"].tolist() == [8.0]


@pytest.mark.parametrize("method", ["Predict", "/tensorflow.serving.PredictionService/Predict", "PREDICT"])
def test_method_may_be_the_rpc_name_or_path(method: str) -> None:
    exchange = decode_exchange(tfs_grpc(method, predict_request(x=np.zeros((2, 2), np.float32))))

    assert exchange.method == "predict" and exchange.n_instances == 2


def test_failed_call_keeps_inputs_and_ignores_the_response_bytes() -> None:
    record = tfs_grpc("predict", predict_request(x=np.zeros((2, 2), np.float32)), b"\xff\xff garbage", status=3)

    exchange = decode_exchange(record)

    assert exchange.outputs == {}
    assert exchange.inputs["x"].shape == (2, 2)


def test_classify_example_list() -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "census"
    request.input.example_list.examples.extend([example(age=[39.0], education=[b"Bachelors"], hours=[40]),
                                                example(age=[50.0], education=[b"HS-grad"], hours=[13])])
    response = classification_pb2.ClassificationResponse()
    for scores in ([0.8, 0.2], [0.3, 0.7]):
        classifications = response.result.classifications.add()
        for label, score in zip(("<=50K", ">50K"), scores, strict=True):
            classifications.classes.add(label=label, score=score)

    exchange = decode_exchange(tfs_grpc("classify", request, response))

    assert exchange.method == "classify" and exchange.n_instances == 2
    assert exchange.inputs["age"].tolist() == [39.0, 50.0]
    assert exchange.inputs["education"].tolist() == ["Bachelors", "HS-grad"]
    assert exchange.inputs["hours"].tolist() == [40, 13]
    np.testing.assert_allclose(exchange.outputs["scores"], [[0.8, 0.2], [0.3, 0.7]], rtol=1e-6)
    assert exchange.classes is not None and exchange.classes.tolist() == [["<=50K", ">50K"]] * 2


def test_classify_example_list_with_context() -> None:
    request = classification_pb2.ClassificationRequest(input=input_pb2.Input(
        example_list_with_context=input_pb2.ExampleListWithContext(
            examples=[example(cuisine=[b"Pizzeria"]), example(cuisine=[b"Taqueria"])],
            context=example(query=[b"pizza"], radius=[1.5, 2.5]))))

    exchange = decode_exchange(tfs_grpc("classify", request, status=14))  # UNAVAILABLE: request only

    assert exchange.inputs["query"].tolist() == ["pizza", "pizza"]
    assert exchange.inputs["radius"].tolist() == [[1.5, 2.5], [1.5, 2.5]]
    assert exchange.inputs["cuisine"].tolist() == ["Pizzeria", "Taqueria"]


def test_regress() -> None:
    request = regression_pb2.RegressionRequest()
    request.input.example_list.examples.extend([example(x=[1.0]), example(x=[2.0]), example(x=[3.0])])
    response = regression_pb2.RegressionResponse()
    for value in (0.5, 1.5, 2.5):
        response.result.regressions.add(value=value)

    exchange = decode_exchange(tfs_grpc("regress", request, response))

    assert exchange.method == "regress"
    assert exchange.outputs["output"].tolist() == [0.5, 1.5, 2.5]


def test_truncated_or_garbage_protobuf_is_a_protobuf_error() -> None:
    serialized = predict_request(x=np.arange(64, dtype=np.float32).reshape(8, 8)).SerializeToString()

    assert reason_of("predict", serialized[:-7]) == "protobuf"
    assert reason_of("predict", b"\xff\xff\xff\xff") == "protobuf"
    assert reason_of("predict", predict_request(x=np.ones((1, 1), np.float32)), serialized[:20]) == "protobuf"
    assert reason_of("classify", b"\x12\x05\x0a\x03\x0a\x01") == "protobuf"


def test_malformed_predict_exchanges() -> None:
    bad_dtype = predict_pb2.PredictRequest()
    bad_dtype.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_INVALID, float_val=[1.0]))
    complex_input = predict_request(x=np.array([1 + 1j], dtype=np.complex64))

    assert reason_of("predict", predict_pb2.PredictRequest(model_spec={"name": "m"})) == "missing"
    assert reason_of("predict", b"") == "empty"
    assert reason_of("predict", predict_request(a=np.zeros(2, np.float32), b=np.zeros(3, np.float32))) == "shape"
    assert reason_of("predict", predict_request(x=np.zeros((0, 2), np.float32))) == "empty"
    assert reason_of("predict", bad_dtype) == "dtype"
    assert reason_of("predict", complex_input) == "unsupported"
    assert reason_of("predict", predict_request(x=np.zeros(2, np.float32)), predict_response(y=np.zeros(3))) == "shape"


def test_malformed_classify_and_regress_exchanges() -> None:
    two = classification_pb2.ClassificationRequest()
    two.input.example_list.examples.extend([example(x=[1.0]), example(x=[2.0])])
    ragged = classification_pb2.ClassificationResponse()
    ragged.result.classifications.add().classes.add(label="a", score=1.0)
    ragged.result.classifications.add()
    one_value = regression_pb2.RegressionResponse()
    one_value.result.regressions.add(value=1.0)

    assert reason_of("classify", classification_pb2.ClassificationRequest(model_spec={"name": "m"})) == "missing"
    assert reason_of("classify", classification_pb2.ClassificationRequest(
        input=input_pb2.Input(example_list=input_pb2.ExampleList()))) == "empty"
    assert reason_of("classify", two, ragged) == "shape"
    assert reason_of("regress", regression_pb2.RegressionRequest(input=two.input), one_value) == "shape"
    assert reason_of("classify", two, classification_pb2.ClassificationResponse()) == "shape"


def test_multi_inference_is_unsupported() -> None:
    assert reason_of("multiinference", predict_request(x=np.zeros(1, np.float32))) == "unsupported"
