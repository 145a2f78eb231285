"""Open Inference Protocol (KServe V2) tensors to canonical arrays: JSON `data`, typed `contents`, raw bytes.

Raw buffers (gRPC raw_input_contents / raw_output_contents, REST binary-data extension) are row-major and
little-endian; BOOL is one byte per element; BYTES elements each carry a 4-byte little-endian length prefix.
BYTES elements (contents or raw) are `str` when valid UTF-8 and the exact `bytes` otherwise (an encoded image).
FP16 and BF16 have no typed contents field and travel as raw bytes (or JSON numbers over REST). UINT64
becomes float64 like everywhere in the codec, so its JSON data may hold any number.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from sidecar._proto import v2_pb2
from sidecar.codec.arrays import bfloat16_to_float, canonical, object_array, text_array, text_or_bytes
from sidecar.codec.errors import DecodeError
from sidecar.codec.jsonvalues import KIND_BOOL, KIND_FLOAT, KIND_INT, KIND_TEXT, typed_json_array


class Datatype(NamedTuple):
    raw: np.dtype | None  # element layout in raw buffers; None for BYTES (length-prefixed)
    kind: str  # what JSON data must hold
    contents: str | None  # InferTensorContents field, None when the type has none


DATATYPES: dict[str, Datatype] = {
    "BOOL": Datatype(np.dtype("u1"), KIND_BOOL, "bool_contents"),
    "UINT8": Datatype(np.dtype("u1"), KIND_INT, "uint_contents"),
    "UINT16": Datatype(np.dtype("<u2"), KIND_INT, "uint_contents"),
    "UINT32": Datatype(np.dtype("<u4"), KIND_INT, "uint_contents"),
    "UINT64": Datatype(np.dtype("<u8"), KIND_FLOAT, "uint64_contents"),
    "INT8": Datatype(np.dtype("i1"), KIND_INT, "int_contents"),
    "INT16": Datatype(np.dtype("<i2"), KIND_INT, "int_contents"),
    "INT32": Datatype(np.dtype("<i4"), KIND_INT, "int_contents"),
    "INT64": Datatype(np.dtype("<i8"), KIND_INT, "int64_contents"),
    "FP16": Datatype(np.dtype("<f2"), KIND_FLOAT, None),
    "BF16": Datatype(np.dtype("<u2"), KIND_FLOAT, None),
    "FP32": Datatype(np.dtype("<f4"), KIND_FLOAT, "fp32_contents"),
    "FP64": Datatype(np.dtype("<f8"), KIND_FLOAT, "fp64_contents"),
    "BYTES": Datatype(None, KIND_TEXT, "bytes_contents"),
}


def datatype(name: str) -> Datatype:
    found = DATATYPES.get(name)
    if found is None:
        raise DecodeError("dtype", f"unknown datatype {name[:40]!r}")
    return found


def checked_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(type(size) is int and size >= 0 for size in shape):
        raise DecodeError("shape", f"invalid shape {str(shape)[:80]}")
    return tuple(shape)


def from_json(type_name: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    values = typed_json_array(data, datatype(type_name).kind)
    return _reshaped(values, shape)


def from_contents(type_name: str, shape: tuple[int, ...], contents: v2_pb2.InferTensorContents) -> np.ndarray:
    spec = datatype(type_name)
    if spec.contents is None:
        if math.prod(shape) == 0:
            return from_raw(type_name, shape, b"")
        raise DecodeError("missing", f"{type_name} tensors need raw contents")
    field = getattr(contents, spec.contents)
    values = text_array(field) if spec.raw is None else np.asarray(field)
    if type_name == "BOOL":
        values = values.astype(bool)
    return _reshaped(canonical(values), shape)


def from_raw(type_name: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    spec = datatype(type_name)
    if spec.raw is None:
        return _reshaped(object_array(_length_prefixed(raw)), shape)
    if len(raw) % spec.raw.itemsize:
        raise DecodeError("shape", f"{len(raw)} raw bytes are not whole {type_name} values")
    values = np.frombuffer(raw, dtype=spec.raw)
    if type_name == "BOOL":
        values = values.astype(bool)
    elif type_name == "BF16":
        values = bfloat16_to_float(values)
    array = canonical(values)
    return _reshaped(array if array.flags.writeable else array.copy(), shape)


def _length_prefixed(raw: bytes) -> list[str | bytes]:
    items: list[str | bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise DecodeError("shape", "truncated BYTES length prefix")
        size = int.from_bytes(raw[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise DecodeError("shape", "a BYTES element runs past its buffer")
        items.append(text_or_bytes(raw[pos:pos + size]))
        pos += size
    return items


def _reshaped(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if values.size != math.prod(shape):
        raise DecodeError("shape", f"{values.size} values for shape {list(shape)}")
    return values.reshape(shape)
