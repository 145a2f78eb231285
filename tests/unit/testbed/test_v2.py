from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from sidecar._proto import v2_pb2
from sidecar.testbed import v2
from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.status import Code, ServingError


def error_of(call: Any, *args: Any) -> ServingError:
    with pytest.raises(ServingError) as caught:
        call(*args)
    return caught.value


def test_resolve_in_triton_words(registry: ModelRegistry) -> None:
    assert v2.resolve(registry, "multi").version == 2
    assert v2.resolve(registry, "multi", "1").version == 1
    assert error_of(v2.resolve, registry, "nope", "").message == "Request for unknown model: 'nope' is not found"
    assert error_of(v2.resolve, registry, "multi", "9").code == Code.NOT_FOUND
    assert error_of(v2.resolve, registry, "multi", "x").code == Code.INVALID_ARGUMENT


def test_model_metadata_lists_serving_default_tensors(registry: ModelRegistry) -> None:
    meta = v2.model_metadata(registry, registry.resolve("multi"))
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "tensorflow_savedmodel"
    assert meta["inputs"] == [{"name": "tag", "datatype": "BYTES", "shape": [-1]},
                              {"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    proto = v2.model_metadata_proto(registry, registry.resolve("multi"))
    assert [t.name for t in proto.outputs] == ["label_bytes", "score"]


def test_json_data_may_be_nested_or_flat() -> None:
    nested = v2.array_from_json("x", "FP32", [2, 2], [[1, 2], [3, 4]])
    flat = v2.array_from_json("x", "FP32", [2, 2], [1, 2, 3, 4])
    np.testing.assert_array_equal(nested, flat)
    assert v2.array_from_json("t", "BYTES", [1], ["a"]).tolist() == [b"a"]
    assert v2.array_from_json("b", "BOOL", [2], [True, False]).dtype == np.bool_


@pytest.mark.parametrize(("datatype", "shape", "data", "message"), [
    ("FP32", [3], [1, 2], "unexpected number of elements for input 'x'"),
    ("INT64", [1], [1.5], "has an invalid value"),
    ("BOOL", [1], [1], "has an invalid value"),
    ("BYTES", [1], [1], "expects strings"),
    ("FP99", [1], [1], "invalid datatype 'FP99'"),
    ("UINT8", [1], [300], "out of range"),
])
def test_bad_json_data(datatype: str, shape: list[int], data: Any, message: str) -> None:
    assert message in error_of(v2.array_from_json, "x", datatype, shape, data).message


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2], np.int64), np.array([True]),
    np.array([0.5], np.float16), np.array([7], np.uint8),
], ids=str)
def test_raw_round_trip(array: np.ndarray[Any, Any]) -> None:
    datatype, raw = v2.raw_of(array)
    np.testing.assert_array_equal(v2.array_from_raw("x", datatype, list(array.shape), raw), array)


def test_raw_bytes_elements_are_length_prefixed() -> None:
    array = np.empty(2, dtype=object)
    array[:] = [b"ab", b""]
    datatype, raw = v2.raw_of(array)
    assert datatype == "BYTES" and raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    assert v2.array_from_raw("t", "BYTES", [2], raw).tolist() == [b"ab", b""]
    assert "length prefix" in error_of(v2.array_from_raw, "t", "BYTES", [1], b"\x01\x00").message
    assert "inside an element" in error_of(v2.array_from_raw, "t", "BYTES", [1], b"\x05\x00\x00\x00ab").message
    assert "whole number" in error_of(v2.array_from_raw, "x", "FP32", [1], b"\x00\x00\x00").message


def test_contents_round_trip() -> None:
    array = np.array([[1.5, 2.5]], np.float32)
    datatype, contents = v2.contents_of(array)
    assert datatype == "FP32" and list(contents.fp32_contents) == [1.5, 2.5]
    np.testing.assert_array_equal(v2.array_from_contents("x", datatype, [1, 2], contents), array)
    empty = v2_pb2.InferTensorContents()
    assert "needs raw_input_contents" in error_of(v2.array_from_contents, "x", "FP16", [1], empty).message


def test_run_checks_names_and_datatypes(registry: ModelRegistry) -> None:
    servable = registry.resolve("classifier")
    features = np.zeros((1, 4), np.float32)
    outputs = v2.run(servable, {"features": ("FP32", features)}, [])
    assert list(outputs) == ["probabilities"]
    assert "unexpected datatype FP64" in error_of(v2.run, servable, {"features": ("FP64", features)}, []).message
    assert "unexpected inference input 'x'" in error_of(v2.run, servable, {"x": ("FP32", features)}, []).message
    assert "unexpected inference output 'y'" in error_of(v2.run, servable, {"features": ("FP32", features)},
                                                         ["y"]).message


def test_json_data_of_outputs() -> None:
    assert v2.json_data(np.array([0.1], np.float32)) == [0.1]
    labels = np.empty(1, dtype=object)
    labels[:] = [b"x"]
    assert v2.json_data(labels) == ["x"]
    assert v2.json_data(np.array([3], np.int64)) == [3]
