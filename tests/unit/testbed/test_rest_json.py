from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from sidecar._proto import tf_pb2
from sidecar.testbed import rest_json
from sidecar.testbed.status import Code, ServingError
from sidecar.testbed.tensors import DT, make_shape


def info(dtype: int, *shape: int) -> tf_pb2.TensorInfo:
    return tf_pb2.TensorInfo(dtype=dtype, tensor_shape=make_shape(shape))  # type: ignore[arg-type]


FEATURES = {"features": info(DT.DT_FLOAT, -1, 4)}
MULTI = {"x": info(DT.DT_FLOAT, -1, 3), "tag": info(DT.DT_STRING, -1)}


def error_of(call: Any, *args: Any) -> ServingError:
    with pytest.raises(ServingError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(("body", "message"), [
    (b"", "JSON Parse error: The document is empty"),
    (b"{oops", "JSON Parse error: Expecting property name enclosed in double quotes at offset: 1"),
    (b"[1, 2]", "JSON Value: [\n    1,\n    2\n] Is not object"),
])
def test_documents_must_be_json_objects(body: bytes, message: str) -> None:
    error = error_of(rest_json.parse_document, body)
    assert error.code == Code.INVALID_ARGUMENT and error.message == message


def test_nan_and_infinity_tokens_parse() -> None:
    doc = rest_json.parse_document(b'{"inputs": [NaN, Infinity, -Infinity]}')
    tensor = rest_json.tensor_from_json(doc["inputs"], DT.DT_FLOAT)
    assert np.isnan(tensor[0]) and tensor[1] == np.inf and tensor[2] == -np.inf


def test_signature_name_must_be_a_string() -> None:
    assert rest_json.signature_name({}) == ""
    assert rest_json.signature_name({"signature_name": "s"}) == "s"
    assert "'signature_name' key must be a string value." in error_of(rest_json.signature_name,
                                                                      {"signature_name": 1}).message


def test_row_format_batches_plain_instances() -> None:
    fmt, tensors = rest_json.tensors_from_request({"instances": [[1, 2, 3, 4], [5, 6, 7, 8.5]]}, FEATURES)
    assert fmt == rest_json.ROW
    assert tensors["features"].dtype == np.float32 and tensors["features"].shape == (2, 4)


def test_row_format_with_named_inputs_and_b64() -> None:
    raw = b"\x00\x01"
    doc = {"instances": [{"x": [1, 2, 3], "tag": {"b64": base64.b64encode(raw).decode()}},
                         {"x": [4, 5, 6], "tag": "t"}]}
    _, tensors = rest_json.tensors_from_request(doc, MULTI)
    assert tensors["tag"].tolist() == [raw, b"t"] and tensors["x"].shape == (2, 3)


def test_columnar_format_single_and_named() -> None:
    fmt, tensors = rest_json.tensors_from_request({"inputs": [[1, 2, 3, 4]]}, FEATURES)
    assert fmt == rest_json.COLUMNAR and tensors["features"].shape == (1, 4)
    _, named = rest_json.tensors_from_request({"inputs": {"x": [[1, 2, 3]], "tag": ["a"]}}, MULTI)
    assert named["tag"].tolist() == [b"a"]


@pytest.mark.parametrize(("doc", "infos", "message"), [
    ({"instances": [1], "inputs": [1]}, FEATURES, "Not formatted correctly expecting only one of 'inputs' or "
                                                  "'instances' keys to exist "),
    ({}, FEATURES, "Missing 'inputs' or 'instances' key"),
    ({"instances": {}}, FEATURES, "Excepting 'instances' to be an list/array"),
    ({"instances": []}, FEATURES, "No values in 'instances' array"),
    ({"instances": [[1, 2]]}, MULTI, "instances is a plain list, but expecting list of objects as multiple input "
                                     "tensors required as per tensorinfo_map"),
    ({"instances": [{"x": [1, 2, 3], "tag": "a"}, [1]]}, MULTI, "Expecting object but got list at item 1 of "
                                                                "input list"),
    ({"instances": [{"x": [1, 2, 3]}]}, MULTI, "keys must be equal to: tag,x"),
    ({"instances": [{"x": [1, 2, 3], "tag": "a", "y": 1}]}, MULTI, "JSON object: does not have named input: y"),
    ({"instances": [[1, 2, 3, 4], [1, 2, 3]]}, FEATURES, "Expecting tensor size: 4 but got: 3"),
    ({"instances": [[[1, 2], [3, 4]], [1, 2, 3, 4]]}, FEATURES, "Expecting shape [2,2] but got: [4]"),
    ({"instances": [["a", 2, 3, 4]]}, FEATURES, 'JSON Value: "a" Type: String is not of expected type: float'),
    ({"instances": [[1, [2], 3, 4]]}, FEATURES, "Encountered list at unexpected level: 1 expected < 1"),
    ({"inputs": [[1, 2], 3]}, FEATURES, "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at "
                                        "level: 2"),
    ({"instances": [[[1, 2], [3]]]}, FEATURES, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ({"instances": [[16777217, 1, 1, 1]]}, FEATURES, "Cannot convert JSON value: 16777217 to float without loss "
                                                     "of precision."),
    ({"inputs": [1, 2]}, MULTI, "inputs is a plain value/list, but expecting an object as multiple input tensors"),
    ({"inputs": {"x": [[1, 2, 3]]}}, MULTI, "Missing named input: tag in 'inputs' object."),
    ({"inputs": {"x": [[1, 2, 3]], "tag": [{"b64": "%%"}]}}, MULTI, "Unable to base64 decode"),
    ({"inputs": {"x": [[1, 2, 3]], "tag": [{"b64": "AA", "x": 1}]}}, MULTI, "not formatted correctly for base64"),
])
def test_malformed_requests_get_tf_serving_messages(doc: dict[str, Any], infos: Any, message: str) -> None:
    error = error_of(rest_json.tensors_from_request, doc, infos)
    assert error.code == Code.INVALID_ARGUMENT
    assert message in error.message


@pytest.mark.parametrize(("dtype", "good", "bad"), [
    (DT.DT_INT32, 7, 7.0), (DT.DT_INT64, -(2**63), 2**63), (DT.DT_BOOL, True, 1), (DT.DT_STRING, "s", 1),
    (DT.DT_UINT32, 2**32 - 1, -1), (DT.DT_DOUBLE, 2**53 - 1, 2**53), (DT.DT_FLOAT, 1, True),
])
def test_scalar_conversion_follows_the_dtype(dtype: int, good: Any, bad: Any) -> None:
    assert rest_json.tensor_from_json([good], dtype).shape == (1,)
    assert error_of(rest_json.tensor_from_json, [bad], dtype).code == Code.INVALID_ARGUMENT


def test_half_precision_over_rest_is_unimplemented() -> None:
    assert error_of(rest_json.tensor_from_json, [1.0], DT.DT_HALF).code == Code.UNIMPLEMENTED


@pytest.mark.parametrize(("value", "single", "text"), [
    (0.5, True, "0.5"), (3.0, True, "3.0"), (float(np.float32(0.1)), True, "0.1"),
    (float(np.float32(0.123456789)), True, "0.123456791"), (1e-5, False, "1e-05"), (1234567.0, True, "1234567.0"),
    (float("nan"), True, "NaN"), (float("inf"), True, "Infinity"), (float("-inf"), False, "-Infinity"),
    (0.1, False, "0.1"), (1 / 3, False, "0.33333333333333331"),
])
def test_floats_are_written_like_tf_serving(value: float, single: bool, text: str) -> None:
    assert rest_json.format_float(value, single) == text


def test_predict_response_row_and_columnar_shapes() -> None:
    one = {"probabilities": np.array([[0.25, 0.75]], np.float32)}
    assert json.loads(rest_json.predict_response(one, rest_json.ROW)) == {"predictions": [[0.25, 0.75]]}
    assert json.loads(rest_json.predict_response(one, rest_json.COLUMNAR)) == {"outputs": [[0.25, 0.75]]}
    labels = np.empty(2, dtype=object)
    labels[:] = [b"\xff", b"b"]
    two = {"score": np.array([1.0, 2.0], np.float32), "label_bytes": labels, "name": labels.copy()}
    rows = json.loads(rest_json.predict_response(two, rest_json.ROW))["predictions"]
    assert rows[0] == {"score": 1.0, "label_bytes": {"b64": "/w=="}, "name": "\ufffd"}
    columns = json.loads(rest_json.predict_response(two, rest_json.COLUMNAR))["outputs"]
    assert columns["label_bytes"] == [{"b64": "/w=="}, {"b64": "Yg=="}] and columns["score"] == [1.0, 2.0]


def test_row_responses_need_a_common_batch_dimension() -> None:
    assert "has no shape information" in error_of(
        rest_json.predict_response, {"s": np.array(1.0, np.float32)}, rest_json.ROW).message
    mixed = {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}
    assert "inconsistent batch size: 3 expecting: 2" in error_of(
        rest_json.predict_response, mixed, rest_json.ROW).message


def test_classify_and_regress_bodies() -> None:
    assert json.loads(rest_json.classify_response([[("0", 0.5), ("1", 0.5)]])) == {"results": [[["0", 0.5],
                                                                                                 ["1", 0.5]]]}
    assert json.loads(rest_json.regress_response([1.5, 2.0])) == {"results": [1.5, 2.0]}
    assert json.loads(rest_json.error_body("é")) == {"error": "é"}
