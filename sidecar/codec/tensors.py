"""TensorFlow TensorProto (wire-compatible `sidecar.wire.tf.TensorProto`) to canonical numpy arrays.

Both encodings TF Serving writes are read, with TensorFlow's own semantics (tensor.cc `Tensor::FromProto`):
- `tensor_content`: raw little-endian row-major values (`--enable_serialization_as_tensor_content`); for
  DT_STRING, TensorFlow's string-list coding (a varint32 length per element, then the bytes).
- the typed field of the dtype (float_val, int_val, half_val, ...). A field holding fewer values than the
  shape repeats its last value (one value broadcasts to the whole shape), an empty field means zeros (or
  empty strings), extra values are ignored.
DT_STRING elements are `str` when valid UTF-8 and the exact `bytes` otherwise (an encoded image).
A dimension of -1 (unknown) is inferred from the value count when it is the only one; an unknown rank gives a
1-D array. Complex, resource and variant tensors raise DecodeError("unsupported").
"""

from __future__ import annotations

import math

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.codec.arrays import BOOL, bfloat16_to_float, canonical, object_array, text_array, text_or_bytes
from sidecar.codec.errors import DecodeError

MAX_FILLED_ELEMENTS = 1 << 26
"""Broadcast, padding and zero-fill are refused beyond this many elements: a few bytes on the wire must not
allocate gigabytes in a worker."""

_DT = tf_pb2.DataType
_HALF = np.dtype("<f2")
_BITS16 = np.dtype("<u2")

# dtype -> (element type of tensor_content, typed field name)
_NUMERIC: dict[int, tuple[np.dtype, str]] = {
    _DT.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    _DT.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    _DT.DT_INT32: (np.dtype("<i4"), "int_val"),
    _DT.DT_INT16: (np.dtype("<i2"), "int_val"),
    _DT.DT_INT8: (np.dtype("i1"), "int_val"),
    _DT.DT_UINT16: (np.dtype("<u2"), "int_val"),
    _DT.DT_UINT8: (np.dtype("u1"), "int_val"),
    _DT.DT_QINT32: (np.dtype("<i4"), "int_val"),
    _DT.DT_QINT16: (np.dtype("<i2"), "int_val"),
    _DT.DT_QUINT16: (np.dtype("<u2"), "int_val"),
    _DT.DT_QINT8: (np.dtype("i1"), "int_val"),
    _DT.DT_QUINT8: (np.dtype("u1"), "int_val"),
    _DT.DT_INT64: (np.dtype("<i8"), "int64_val"),
    _DT.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    _DT.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    _DT.DT_BOOL: (np.dtype("u1"), "bool_val"),
    _DT.DT_HALF: (_BITS16, "half_val"),
    _DT.DT_BFLOAT16: (_BITS16, "half_val"),
}
_UNSUPPORTED = frozenset({_DT.DT_COMPLEX64, _DT.DT_COMPLEX128, _DT.DT_RESOURCE, _DT.DT_VARIANT})


def tensor_to_array(tensor: tf_pb2.TensorProto) -> np.ndarray:
    """Decode one TensorProto; raises DecodeError("dtype"/"shape"/"unsupported") for what cannot be read."""
    dtype = tensor.dtype
    if dtype == _DT.DT_STRING:
        return _strings(tensor)
    spec = _NUMERIC.get(dtype)
    if spec is None:
        if dtype in _UNSUPPORTED:
            raise DecodeError("unsupported", f"{_DT.Name(dtype)} tensors")
        raise DecodeError("dtype", f"unknown tensor dtype {dtype}")
    element, field = spec
    content = tensor.tensor_content
    if content:
        if len(content) % element.itemsize:
            raise DecodeError("shape", f"tensor_content of {len(content)} bytes is not a whole number of values")
        count = len(content) // element.itemsize
        shape = _shape(tensor, count)
        if math.prod(shape) != count:
            raise DecodeError("shape", f"tensor_content holds {count} values for shape {list(shape)}")
        values = np.frombuffer(content, dtype=element)
    else:
        field_values = getattr(tensor, field)
        # uint64 values past 2**63 would become floats through numpy's default type; narrow ints wrap (TF does)
        typed = np.asarray(field_values, dtype=element) if element.kind == "u" and element.itemsize == 8 else (
            np.asarray(field_values))
        shape = _shape(tensor, len(typed))
        values = _filled(typed, math.prod(shape)).astype(element, copy=False)
    return _finish(values, dtype).reshape(shape)


def _finish(values: np.ndarray, dtype: int) -> np.ndarray:
    if dtype == _DT.DT_BOOL:
        return values.astype(BOOL)
    if dtype == _DT.DT_HALF:
        values = values.view(_HALF)
    elif dtype == _DT.DT_BFLOAT16:
        values = bfloat16_to_float(values)
    array = canonical(values)
    return array if array.flags.writeable else array.copy()


def _strings(tensor: tf_pb2.TensorProto) -> np.ndarray:
    content = tensor.tensor_content
    if content:
        shape = _shape(tensor, -1)
        return text_array(_string_list(content, math.prod(shape))).reshape(shape)
    raw = tensor.string_val
    shape = _shape(tensor, len(raw))
    total = math.prod(shape)
    if len(raw) == total:
        return text_array(raw).reshape(shape)
    _check_fill(total)
    head = [text_or_bytes(value) for value in raw[:total]]
    fill = head[-1] if head else ""
    return object_array(head + [fill] * (total - len(head))).reshape(shape)


def _string_list(content: bytes, count: int) -> list[bytes]:
    """TensorFlow's EncodeStringList: `count` varint32 lengths, then the concatenated bytes."""
    sizes = []
    pos = 0
    for _ in range(count):
        size, shift = 0, 0
        while True:
            if pos >= len(content) or shift > 28:
                raise DecodeError("shape", "truncated string tensor_content")
            byte = content[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        sizes.append(size)
    if sum(sizes) != len(content) - pos:
        raise DecodeError("shape", "string tensor_content lengths do not match its size")
    values = []
    for size in sizes:
        values.append(content[pos:pos + size])
        pos += size
    return values


def _shape(tensor: tf_pb2.TensorProto, count: int) -> tuple[int, ...]:
    """The tensor's shape, with one unknown (-1) dimension inferred from `count` values (-1: not known)."""
    proto = tensor.tensor_shape
    if proto.unknown_rank:
        if count < 0:
            raise DecodeError("shape", "a string tensor_content needs a known shape")
        return (count,)
    dims = [dim.size for dim in proto.dim]
    unknown = [axis for axis, size in enumerate(dims) if size == -1]
    if any(size < -1 for size in dims):
        raise DecodeError("shape", f"invalid dimension in {dims}")
    if not unknown:
        return tuple(dims)
    known = math.prod(size for size in dims if size != -1)
    if len(unknown) > 1 or count < 0 or known == 0 or count % known:
        raise DecodeError("shape", f"cannot infer the unknown dimension of {dims} from {count} values")
    dims[unknown[0]] = count // known
    return tuple(dims)


def _filled(values: np.ndarray, total: int) -> np.ndarray:
    """TensorFlow's rule for typed fields: pad with the last value, zeros when empty, ignore extras."""
    if len(values) >= total:
        return values[:total]
    _check_fill(total)
    if len(values) == 0:
        return np.zeros(total, dtype=values.dtype)
    return np.concatenate([values, np.full(total - len(values), values[-1], dtype=values.dtype)])


def _check_fill(total: int) -> None:
    if total > MAX_FILLED_ELEMENTS:
        raise DecodeError("shape", f"refusing to fill {total} elements from fewer values")
