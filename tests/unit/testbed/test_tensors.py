from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sidecar._proto import tf_pb2
from sidecar.testbed.status import Code, ServingError
from sidecar.testbed.tensors import DT, data_type, dtype_name, from_numpy, make_shape, to_numpy

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array([[1.5, -2.25]], dtype=np.float64),
    np.array([1, -2, 3], dtype=np.int32),
    np.array([1, 2], dtype=np.uint8),
    np.array([-1, 2], dtype=np.int8),
    np.array([-1, 2], dtype=np.int16),
    np.array([1, 2], dtype=np.uint16),
    np.array([2**40, -(2**40)], dtype=np.int64),
    np.array([True, False]),
    np.array([0.5, -1.0], dtype=np.float16),
    np.array([2**32 - 1], dtype=np.uint32),
    np.array([2**64 - 1], dtype=np.uint64),
    np.array([1 + 2j, -3j], dtype=np.complex64),
    np.array([1 + 2j], dtype=np.complex128),
    np.array(7.0, dtype=np.float32),
    np.zeros((0, 4), dtype=np.float32),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
@pytest.mark.parametrize("tensor_content", [False, True])
def test_round_trip_in_both_encodings(array: np.ndarray[Any, Any], tensor_content: bool) -> None:
    proto = from_numpy(array, tensor_content)
    assert bool(proto.tensor_content) == (tensor_content and array.size > 0)
    decoded = to_numpy(tf_pb2.TensorProto.FromString(proto.SerializeToString()))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_strings_always_use_string_val() -> None:
    array = np.array([b"a", b"\x00\xff"], dtype=object)
    proto = from_numpy(array, tensor_content=True)
    assert proto.dtype == DT.DT_STRING and list(proto.string_val) == [b"a", b"\x00\xff"]
    assert to_numpy(proto).tolist() == [b"a", b"\x00\xff"]
    assert list(from_numpy(np.array(["x"])).string_val) == [b"x"]


def proto_with(dtype: int, shape: list[int], **fields: Any) -> tf_pb2.TensorProto:
    proto = tf_pb2.TensorProto(dtype=dtype, tensor_shape=make_shape(shape))  # type: ignore[arg-type]
    for name, values in fields.items():
        getattr(proto, name).extend(values)
    return proto


def test_a_single_typed_value_broadcasts_to_the_whole_shape() -> None:
    np.testing.assert_array_equal(to_numpy(proto_with(DT.DT_FLOAT, [2, 3], float_val=[1.5])), np.full((2, 3), 1.5))
    assert to_numpy(proto_with(DT.DT_STRING, [3], string_val=[b"s"])).tolist() == [b"s"] * 3


def test_a_short_typed_field_is_padded_with_its_last_value_and_an_empty_one_means_zeros() -> None:
    assert to_numpy(proto_with(DT.DT_INT64, [4], int64_val=[1, 2])).tolist() == [1, 2, 2, 2]
    assert to_numpy(proto_with(DT.DT_INT32, [3])).tolist() == [0, 0, 0]
    assert to_numpy(proto_with(DT.DT_STRING, [2])).tolist() == [b"", b""]


@pytest.mark.parametrize(("proto", "message"), [
    (proto_with(DT.DT_FLOAT, [2], float_val=[1, 2, 3]), "tensor has 3 values but shape [2] holds 2"),
    (tf_pb2.TensorProto(dtype=DT.DT_FLOAT, tensor_shape=make_shape([2]), tensor_content=b"abc"),
     "tensor_content has 3 bytes"),
    (proto_with(DT.DT_FLOAT, [-1]), "negative dimension"),
    (tf_pb2.TensorProto(dtype=DT.DT_FLOAT, tensor_shape=tf_pb2.TensorShapeProto(unknown_rank=True)), "unknown rank"),
    (proto_with(DT.DT_RESOURCE, [1]), "unsupported tensor dtype resource"),
    (proto_with(DT.DT_COMPLEX64, [1], scomplex_val=[1.0]), "odd number"),
])
def test_invalid_tensors_are_invalid_argument(proto: tf_pb2.TensorProto, message: str) -> None:
    with pytest.raises(ServingError) as caught:
        to_numpy(proto)
    assert caught.value.code == Code.INVALID_ARGUMENT and message in caught.value.message


def test_dtype_names_follow_tensorflow() -> None:
    assert dtype_name(DT.DT_FLOAT) == "float" and dtype_name(DT.DT_INT64) == "int64"
    assert dtype_name(DT.DT_HALF) == "half" and dtype_name(999).startswith("unknown")
    assert data_type(np.dtype("U3")) == DT.DT_STRING
    with pytest.raises(ServingError):
        data_type(np.dtype("datetime64[s]"))
