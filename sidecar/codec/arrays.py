"""Canonical array forms handed to the analysis: float64, int64, bool, or object arrays of strings.

String tensors are object arrays whose elements are `str` for values that are valid UTF-8 and `bytes` for
values that are not (binary payloads: PNG/JPEG images, serialized protos). Replacing invalid sequences would
destroy those payloads, so no byte is ever replaced; see `text_or_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from sidecar.codec.errors import DecodeError

FLOAT64 = np.dtype(np.float64)
INT64 = np.dtype(np.int64)
BOOL = np.dtype(np.bool_)
TEXT = np.dtype(object)


def canonical(array: np.ndarray) -> np.ndarray:
    """Widen to the canonical dtype: floats to float64, ints to int64 (uint64 to float64: it may not fit)."""
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(FLOAT64, copy=False)
    if kind == "i" or (kind == "u" and array.dtype.itemsize < 8):
        return array.astype(INT64, copy=False)
    if kind == "u":
        return array.astype(FLOAT64)
    if kind == "b" or kind == "O":
        return array
    if kind == "c":
        raise DecodeError("unsupported", "complex values")
    raise DecodeError("dtype", f"unexpected array dtype {array.dtype}")


def text_or_bytes(value: bytes) -> str | bytes:
    """The value as `str` when it is valid UTF-8, else the exact bytes (an encoded image, a serialized proto)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(value)


def text_array(values: Iterable[bytes]) -> np.ndarray:
    """Bytes to a 1-D object array of `text_or_bytes` values."""
    return object_array([text_or_bytes(value) for value in values])


def object_array(items: Sequence[object]) -> np.ndarray:
    """A 1-D object array holding exactly `items` (np.array would descend into nested sequences)."""
    array = np.empty(len(items), dtype=TEXT)
    array[:] = items
    return array


def bfloat16_to_float(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) are the upper half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
