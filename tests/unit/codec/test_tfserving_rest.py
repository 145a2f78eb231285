"""TF Serving REST exchanges through decode_exchange: every request and response format of json_tensor.cc."""

from __future__ import annotations

import base64
import gzip
import math
from typing import Any

import numpy as np
import pytest

from sidecar.codec import DecodeError, decode_exchange

from .support import png_bytes, tfs_rest


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def reason_of(method: str, request: Any, response: Any = None, status: int = 200) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_exchange(tfs_rest(method, request, response, status=status))
    return caught.value.reason


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_])
def test_row_format_of_a_numpy_batch_round_trips(dtype: type) -> None:
    grid = np.arange(12).reshape(3, 4)
    original = (grid % 3 == 0) if dtype is np.bool_ else (grid * 1.5 if np.dtype(dtype).kind == "f" else grid)
    original = original.astype(dtype)

    exchange = decode_exchange(tfs_rest("predict", {"instances": original.tolist()},
                                        {"predictions": original[:, :1].tolist()}))

    expected_dtype = {"f": np.float64, "i": np.int64, "u": np.int64, "b": np.bool_}[np.dtype(dtype).kind]
    assert exchange.n_instances == 3
    assert exchange.inputs["input"].dtype == expected_dtype
    np.testing.assert_array_equal(exchange.inputs["input"], original)
    np.testing.assert_array_equal(exchange.outputs["output"], original[:, :1])


def test_row_format_with_named_inputs_and_several_outputs() -> None:
    request = {"signature_name": "serving_default",
               "instances": [{"x": [1.0, 2.0], "tag": "a", "img": b64(b"\x89PNG")},
                             {"x": [3.0, 4.0], "tag": "b", "img": b64(b"GIF8")}]}
    response = {"predictions": [{"probs": [0.1, 0.9], "label": "yes", "thumb_bytes": b64(b"\x01")},
                                {"probs": [0.8, 0.2], "label": "no", "thumb_bytes": b64(b"\x02")}]}

    exchange = decode_exchange(tfs_rest("predict", request, response))

    assert exchange.n_instances == 2
    assert exchange.inputs["x"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert exchange.inputs["tag"].tolist() == ["a", "b"]
    assert exchange.inputs["img"].tolist() == [b"\x89PNG", "GIF8"]
    assert exchange.outputs["probs"].tolist() == [[0.1, 0.9], [0.8, 0.2]]
    assert exchange.outputs["label"].tolist() == ["yes", "no"]
    assert exchange.outputs["thumb_bytes"].tolist() == ["\x01", "\x02"]


def test_row_format_of_b64_values_is_one_unnamed_string_input() -> None:
    exchange = decode_exchange(tfs_rest("predict", {"instances": [b64(b"one"), b64(b"two")]},
                                        {"predictions": [1, 0]}))

    assert exchange.inputs["input"].tolist() == ["one", "two"]
    assert exchange.outputs["output"].tolist() == [1, 0]


@pytest.mark.parametrize("layout", ["instances", "inputs"])
def test_a_png_sent_as_b64_arrives_as_its_exact_bytes(layout: str) -> None:
    image = png_bytes()
    request = {"instances": [{"image_bytes": b64(image), "key": "k1"}, {"image_bytes": b64(image[:20]), "key": "k2"}]} \
        if layout == "instances" else {"inputs": {"image_bytes": [b64(image), b64(image[:20])], "key": ["k1", "k2"]}}

    exchange = decode_exchange(tfs_rest("predict", request, {"predictions": [0, 1]}))

    assert exchange.inputs["image_bytes"].dtype == object
    assert exchange.inputs["image_bytes"].tolist() == [image, image[:20]]
    assert exchange.inputs["key"].tolist() == ["k1", "k2"]


def test_columnar_format_with_one_unnamed_input_and_output() -> None:
    exchange = decode_exchange(tfs_rest("predict", {"inputs": [[1, 2, 3], [4, 5, 6]]}, {"outputs": [[0.5], [0.25]]}))

    assert exchange.inputs["input"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert exchange.outputs["output"].tolist() == [[0.5], [0.25]]


def test_columnar_format_with_named_inputs_and_outputs() -> None:
    request = {"inputs": {"a": [[1.0], [2.0], [3.0]], "b": ["x", "y", "z"]}}
    response = {"outputs": {"scores": [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]], "classes": [1, 1, 1]}}

    exchange = decode_exchange(tfs_rest("predict", request, response))

    assert exchange.n_instances == 3
    assert exchange.inputs["b"].tolist() == ["x", "y", "z"]
    assert exchange.outputs["classes"].dtype == np.int64
    assert exchange.outputs["scores"].shape == (3, 2)


def test_columnar_scalars_are_one_instance() -> None:
    exchange = decode_exchange(tfs_rest("predict", {"inputs": 3.5}, {"outputs": 7.0}))

    assert exchange.n_instances == 1
    assert exchange.inputs["input"].tolist() == [3.5]
    assert exchange.outputs["output"].tolist() == [7.0]


def test_a_columnar_scalar_input_applies_to_every_instance() -> None:
    exchange = decode_exchange(tfs_rest("predict", {"inputs": {"x": [[1.0], [2.0]], "temperature": 0.7}},
                                        {"outputs": [[0.1], [0.2]]}))

    assert exchange.n_instances == 2
    assert exchange.inputs["temperature"].tolist() == [0.7, 0.7]


def test_bare_nan_and_infinity_tokens() -> None:
    record = tfs_rest("predict", b'{"instances": [[NaN, 1.0], [Infinity, -Infinity]]}',
                      b'{"predictions": [NaN, 2.0]}')

    exchange = decode_exchange(record)

    values = exchange.inputs["input"]
    assert math.isnan(values[0, 0]) and values[1, 0] == math.inf and values[1, 1] == -math.inf
    assert math.isnan(exchange.outputs["output"][0])


def test_gzip_request_body() -> None:
    record = tfs_rest("predict", gzip.compress(b'{"instances": [[1, 2]]}'), {"predictions": [[3]]}, encoding="gzip")

    assert decode_exchange(record).inputs["input"].tolist() == [[1, 2]]


@pytest.mark.parametrize(("response", "status"), [({"error": "Input is missing"}, 400), (b"<html>502</html>", 502),
                                                  ({"error": "oops"}, 200)])
def test_failed_exchanges_have_inputs_but_no_outputs(response: Any, status: int) -> None:
    exchange = decode_exchange(tfs_rest("predict", {"instances": [[1.0]]}, response, status=status))

    assert exchange.inputs["input"].tolist() == [[1.0]]
    assert exchange.outputs == {}


@pytest.mark.parametrize(("request_body", "reason"), [
    ({"instances": [[1]], "inputs": [[1]]}, "json"),
    ({"signature_name": "x"}, "missing"),
    ({"instances": {"x": 1}}, "json"),
    ({"instances": []}, "empty"),
    ({"instances": [[1, 2], [3]]}, "shape"),
    ({"instances": [{"x": 1}, 2]}, "shape"),
    ({"instances": [1, {"x": 2}]}, "shape"),
    ({"instances": [{"x": 1}, {"y": 2}]}, "missing"),
    ({"instances": [[1, "a"]]}, "dtype"),
    ({"inputs": {}}, "empty"),
    ({"inputs": {"a": [1, 2], "b": [1, 2, 3]}}, "shape"),
    (b"{not json", "json"),
    (b"[1, 2]", "json"),
    (b"", "empty"),
])
def test_malformed_predict_requests(request_body: Any, reason: str) -> None:
    assert reason_of("predict", request_body, {"predictions": [1]}) == reason


@pytest.mark.parametrize(("response", "reason"), [
    ({"predictions": [1, 2, 3]}, "shape"),
    ({"outputs": {"a": [1], "b": [1, 2]}}, "shape"),
    ({"model_version": "1"}, "missing"),
    (b"{truncated", "json"),
    (b"", "empty"),
])
def test_malformed_predict_responses(response: Any, reason: str) -> None:
    assert reason_of("predict", {"instances": [[1], [2]]}, response) == reason


def test_classify_with_context_gives_scores_and_class_labels() -> None:
    request = {"signature_name": "classify", "context": {"query": "pizza"},
               "examples": [{"cuisine": "Pizzeria", "stars": 4.5, "votes": [10, 2]},
                            {"cuisine": b64(b"Taqueria"), "stars": 3.0, "votes": [7, 1]}]}
    response = {"results": [[["yes", 0.9], ["no", 0.1]], [["yes", 0.2], ["no", 0.8]]]}

    exchange = decode_exchange(tfs_rest("classify", request, response))

    assert exchange.method == "classify"
    assert exchange.n_instances == 2
    assert exchange.inputs["query"].tolist() == ["pizza", "pizza"]
    assert exchange.inputs["cuisine"].tolist() == ["Pizzeria", "Taqueria"]
    assert exchange.inputs["stars"].tolist() == [4.5, 3.0]
    assert exchange.inputs["votes"].tolist() == [[10, 2], [7, 1]]
    assert exchange.outputs["scores"].tolist() == [[0.9, 0.1], [0.2, 0.8]]
    assert exchange.classes is not None and exchange.classes.tolist() == [["yes", "no"], ["yes", "no"]]


def test_regress_gives_one_value_per_example() -> None:
    exchange = decode_exchange(tfs_rest("regress", {"examples": [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]},
                                        b'{"results": [0.5, NaN, 2.5]}'))

    assert exchange.method == "regress"
    assert exchange.outputs["output"].dtype == np.float64
    np.testing.assert_array_equal(exchange.outputs["output"], [0.5, np.nan, 2.5])
    assert exchange.classes is None


@pytest.mark.parametrize("method", ["classify", "regress"])
def test_classify_and_regress_errors_have_no_outputs(method: str) -> None:
    exchange = decode_exchange(tfs_rest(method, {"examples": [{"x": 1}]}, {"error": "bad signature"}, status=400))

    assert exchange.outputs == {} and exchange.classes is None


@pytest.mark.parametrize(("request_body", "response", "reason"), [
    ({"context": {"q": "a"}}, {"results": []}, "missing"),
    ({"examples": {"x": 1}}, {"results": []}, "json"),
    ({"examples": []}, {"results": []}, "empty"),
    ({"examples": [{"x": 1}], "context": [1]}, {"results": [[["a", 1.0]]]}, "json"),
    ({"examples": [{"x": 1}, {"x": 2}]}, {"results": [[["a", 1.0]], [["a", 1.0], ["b", 0.0]]]}, "shape"),
    ({"examples": [{"x": 1}, {"x": 2}]}, {"results": [[["a", 1.0]]]}, "shape"),
    ({"examples": [{"x": 1}]}, {"results": [[["a", "high"]]]}, "json"),
    ({"examples": [{"x": 1}]}, {"results": [[1.0]]}, "json"),
    ({"examples": [{"x": 1}]}, {"model": "m"}, "missing"),
])
def test_malformed_classify_exchanges(request_body: Any, response: Any, reason: str) -> None:
    assert reason_of("classify", request_body, response) == reason


@pytest.mark.parametrize(("response", "reason"), [
    ({"results": [[1.0]]}, "shape"), ({"results": ["a"]}, "shape"), ({"results": [1.0, 2.0]}, "shape"),
])
def test_malformed_regress_responses(response: Any, reason: str) -> None:
    assert reason_of("regress", {"examples": [{"x": 1}]}, response) == reason
