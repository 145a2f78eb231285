"""TensorProto <-> numpy for the testbed, read in both encodings TF Serving accepts.

A TensorProto carries its values either as `tensor_content` (raw little-endian bytes, never for strings) or in
the typed field of its dtype. Like TensorFlow's `Tensor::FromProto`, a typed field shorter than the shape is
padded with its last value (so one value broadcasts to the whole shape) and an empty one means zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.testbed.status import invalid_argument

DT = tf_pb2.DataType

NUMPY_DTYPES: dict[int, np.dtype[Any]] = {
    DT.DT_FLOAT: np.dtype(np.float32),
    DT.DT_DOUBLE: np.dtype(np.float64),
    DT.DT_INT32: np.dtype(np.int32),
    DT.DT_UINT8: np.dtype(np.uint8),
    DT.DT_INT16: np.dtype(np.int16),
    DT.DT_INT8: np.dtype(np.int8),
    DT.DT_STRING: np.dtype(object),
    DT.DT_COMPLEX64: np.dtype(np.complex64),
    DT.DT_INT64: np.dtype(np.int64),
    DT.DT_BOOL: np.dtype(np.bool_),
    DT.DT_UINT16: np.dtype(np.uint16),
    DT.DT_COMPLEX128: np.dtype(np.complex128),
    DT.DT_HALF: np.dtype(np.float16),
    DT.DT_UINT32: np.dtype(np.uint32),
    DT.DT_UINT64: np.dtype(np.uint64),
}

_DATA_TYPES: dict[np.dtype[Any], int] = {dtype: dt for dt, dtype in NUMPY_DTYPES.items()}

TYPED_FIELDS: dict[int, str] = {
    DT.DT_FLOAT: "float_val",
    DT.DT_DOUBLE: "double_val",
    DT.DT_INT32: "int_val",
    DT.DT_UINT8: "int_val",
    DT.DT_INT16: "int_val",
    DT.DT_INT8: "int_val",
    DT.DT_UINT16: "int_val",
    DT.DT_STRING: "string_val",
    DT.DT_COMPLEX64: "scomplex_val",
    DT.DT_INT64: "int64_val",
    DT.DT_BOOL: "bool_val",
    DT.DT_COMPLEX128: "dcomplex_val",
    DT.DT_HALF: "half_val",
    DT.DT_UINT32: "uint32_val",
    DT.DT_UINT64: "uint64_val",
}

# tensorflow::DataTypeString: the enum name without DT_, lower case (DT_HALF is "half").
def dtype_name(dtype: int) -> str:
    try:
        return str(DT.Name(dtype))[3:].lower()  # type: ignore[arg-type]
    except ValueError:
        return f"unknown dtype enum ({dtype})"


def data_type(dtype: np.dtype[Any]) -> int:
    """The DataType of a numpy dtype; bytes and str arrays are DT_STRING."""
    if dtype.kind in "OSU":
        return int(DT.DT_STRING)
    try:
        return _DATA_TYPES[dtype]
    except KeyError:
        raise invalid_argument(f"numpy dtype {dtype} has no TensorFlow data type") from None


def shape_of(proto: tf_pb2.TensorShapeProto) -> tuple[int, ...]:
    return tuple(int(dim.size) for dim in proto.dim)


def make_shape(shape: Sequence[int]) -> tf_pb2.TensorShapeProto:
    result = tf_pb2.TensorShapeProto()
    for size in shape:
        result.dim.add().size = int(size)
    return result


def to_numpy(proto: tf_pb2.TensorProto) -> np.ndarray[Any, Any]:
    """Decode a TensorProto; raises INVALID_ARGUMENT when it does not describe a valid dense tensor."""
    dtype = NUMPY_DTYPES.get(proto.dtype)
    if dtype is None:
        raise invalid_argument(f"unsupported tensor dtype {dtype_name(proto.dtype)}")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument("tensor shape has unknown rank")
    shape = shape_of(proto.tensor_shape)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"tensor shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if proto.tensor_content and proto.dtype != DT.DT_STRING:
        expected = count * dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise invalid_argument(
                f"tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} of "
                f"{dtype_name(proto.dtype)} needs {expected}")
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = _typed_values(proto, dtype)
    if len(values) > count:
        raise invalid_argument(f"tensor has {len(values)} values but shape {list(shape)} holds {count}")
    if len(values) < count:
        values = np.concatenate([values, np.repeat(values[-1:] if len(values) else _zero(dtype), count - len(values))])
        values = values.astype(dtype)
    return values.reshape(shape)


def _zero(dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    if dtype.kind == "O":
        return np.array([b""], dtype=object)
    return np.zeros(1, dtype=dtype)


def _typed_values(proto: tf_pb2.TensorProto, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    field = getattr(proto, TYPED_FIELDS[proto.dtype])
    if proto.dtype == DT.DT_STRING:
        result = np.empty(len(field), dtype=object)
        result[:] = list(field)
        return result
    if proto.dtype == DT.DT_HALF:
        return np.array(field, dtype=np.int32).astype(np.uint16).view(np.float16)
    if proto.dtype in (DT.DT_COMPLEX64, DT.DT_COMPLEX128):
        parts = np.array(field, dtype=np.float64)
        if len(parts) % 2:
            raise invalid_argument("complex tensor has an odd number of real/imaginary parts")
        return (parts[0::2] + 1j * parts[1::2]).astype(dtype)
    return np.array(field, dtype=dtype)


def from_numpy(array: np.ndarray[Any, Any], tensor_content: bool = False) -> tf_pb2.TensorProto:
    """Encode an array the way TF Serving answers: typed fields by default, raw `tensor_content` when asked
    (strings always go in `string_val`)."""
    dt = data_type(array.dtype)
    proto = tf_pb2.TensorProto(dtype=dt, tensor_shape=make_shape(array.shape))  # type: ignore[arg-type]
    if dt == DT.DT_STRING:
        proto.string_val.extend(_as_bytes(value) for value in array.reshape(-1))
    elif tensor_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    elif dt == DT.DT_HALF:
        proto.half_val.extend(array.reshape(-1).view(np.uint16).astype(np.int32).tolist())
    elif dt in (DT.DT_COMPLEX64, DT.DT_COMPLEX128):
        flat = array.reshape(-1)
        pairs = np.stack([flat.real, flat.imag], axis=1).reshape(-1)
        getattr(proto, TYPED_FIELDS[dt]).extend(pairs.tolist())
    else:
        getattr(proto, TYPED_FIELDS[dt]).extend(array.reshape(-1).tolist())
    return proto


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
