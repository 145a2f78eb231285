"""Open Inference Protocol tensors: every datatype from JSON data, typed contents and raw little-endian bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from sidecar._proto import v2_pb2
from sidecar.codec import DecodeError
from sidecar.codec.v2_tensors import DATATYPES, checked_shape, from_contents, from_json, from_raw

BFLOAT16 = np.dtype(tf.bfloat16.as_numpy_dtype)
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "BF16": BFLOAT16, "FP32": np.float32, "FP64": np.float64}
CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def sample(type_name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(NUMPY[type_name])
    if type_name == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind == "f" or dtype == BFLOAT16:
        return rng.normal(0, 50, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values.reshape(-1)[:2] = [info.min, info.max]
    return values


def canonical(values: np.ndarray) -> np.ndarray:
    if values.dtype == BFLOAT16 or values.dtype.kind == "f" or values.dtype == np.uint64:
        return values.astype(np.float64)
    return values.astype(np.int64) if values.dtype.kind in "iu" else values


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def test_every_documented_datatype_is_known() -> None:
    assert set(DATATYPES) == {*NUMPY, "BYTES"}


@pytest.mark.parametrize("type_name", list(NUMPY))
@pytest.mark.parametrize("seed", range(3))
def test_raw_bytes_round_trip(type_name: str, seed: int) -> None:
    shape = (seed + 1, 3)
    original = sample(type_name, shape, seed)

    decoded = from_raw(type_name, shape, original.astype(original.dtype.newbyteorder("<")).tobytes())

    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, canonical(original))


@pytest.mark.parametrize("type_name", list(CONTENTS))
def test_typed_contents_round_trip(type_name: str) -> None:
    original = sample(type_name, (4, 2), seed=11)
    contents = v2_pb2.InferTensorContents()
    getattr(contents, CONTENTS[type_name]).extend(original.reshape(-1).tolist())
    wire = v2_pb2.InferTensorContents.FromString(contents.SerializeToString())

    decoded = from_contents(type_name, (4, 2), wire)

    np.testing.assert_array_equal(decoded, canonical(original))


@pytest.mark.parametrize("type_name", [name for name in NUMPY if name != "BF16"])
@pytest.mark.parametrize("nested", [True, False])
def test_json_data_round_trips_nested_or_flat(type_name: str, nested: bool) -> None:
    original = sample(type_name, (2, 3), seed=5)
    data = original.tolist() if nested else original.reshape(-1).tolist()

    decoded = from_json(type_name, (2, 3), data)

    expected = canonical(original)
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


def test_bytes_from_json_contents_and_raw() -> None:
    contents = v2_pb2.InferTensorContents(bytes_contents=[b"a", b"\xff", b""])

    assert from_json("BYTES", (3,), ["a", "é", ""]).tolist() == ["a", "é", ""]
    assert from_contents("BYTES", (3,), contents).tolist() == ["a", b"\xff", ""]
    assert from_raw("BYTES", (1, 3), length_prefixed([b"one", b"", b"caf\xc3\xa9"])).tolist() == [["one", "", "café"]]
    assert from_raw("BYTES", (2,), length_prefixed([b"\x89PNG\r\n", b"ok"])).tolist() == [b"\x89PNG\r\n", "ok"]


@pytest.mark.parametrize("type_name", ["FP16", "BF16"])
def test_half_precision_has_no_contents_field(type_name: str) -> None:
    with pytest.raises(DecodeError) as caught:
        from_contents(type_name, (2,), v2_pb2.InferTensorContents(fp32_contents=[1.0, 2.0]))

    assert caught.value.reason == "missing"
    assert from_contents(type_name, (0, 2), v2_pb2.InferTensorContents()).shape == (0, 2)


@pytest.mark.parametrize(("call", "reason"), [
    (lambda: from_json("FP8", (1,), [1.0]), "dtype"),
    (lambda: from_json("FP32", (2, 2), [1.0, 2.0, 3.0]), "shape"),
    (lambda: from_json("INT32", (2,), [1.5, 2]), "dtype"),
    (lambda: from_json("BOOL", (2,), [1, 0]), "dtype"),
    (lambda: from_json("BYTES", (1,), [3]), "dtype"),
    (lambda: from_json("FP32", (2,), ["1.0", "2.0"]), "dtype"),
    (lambda: from_json("FP32", (2, 2), [[1.0, 2.0], [3.0]]), "shape"),
    (lambda: from_raw("FP32", (2,), b"\x00" * 7), "shape"),
    (lambda: from_raw("INT64", (2,), b"\x00" * 8), "shape"),
    (lambda: from_raw("BYTES", (1,), b"\x05\x00\x00\x00abc"), "shape"),
    (lambda: from_raw("BYTES", (1,), b"\x05\x00"), "shape"),
    (lambda: from_raw("BYTES", (2,), length_prefixed([b"a"])), "shape"),
    (lambda: from_contents("INT32", (3,), v2_pb2.InferTensorContents(int_contents=[1])), "shape"),
])
def test_undecodable_tensors(call: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        call()

    assert caught.value.reason == reason


@pytest.mark.parametrize("shape", [[-1, 2], [1.5], "2,2", None, [True]])
def test_invalid_shapes(shape: Any) -> None:
    with pytest.raises(DecodeError) as caught:
        checked_shape(shape)

    assert caught.value.reason == "shape"
