"""JSON bodies and JSON values to arrays (TF Serving REST and Open Inference Protocol REST).

Python's json accepts the bare `NaN`, `Infinity` and `-Infinity` tokens TF Serving reads and writes. Binary
strings arrive as `{"b64": "..."}` (exactly that one key); their decoded bytes become `str` when they are valid
UTF-8 and stay `bytes` otherwise (an encoded image keeps its exact bytes), like every string in the codec.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from sidecar.codec.arrays import FLOAT64, INT64, TEXT, canonical, object_array, text_or_bytes
from sidecar.codec.errors import DecodeError


def load_json(body: bytes) -> Any:
    if not body:
        raise DecodeError("empty", "empty body")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DecodeError("json", str(exc)[:200]) from exc


def load_object(body: bytes) -> dict[str, Any]:
    document = load_json(body)
    if not isinstance(document, dict):
        raise DecodeError("json", "the top level is not an object")
    return document


def is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def b64_text(value: dict[str, str]) -> str | bytes:
    """The bytes of a `{"b64": ...}` value: `str` when they are valid UTF-8, else `bytes`."""
    encoded = value["b64"]
    try:
        return text_or_bytes(base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("json", "invalid base64 in a b64 value") from exc


def json_array(value: Any) -> np.ndarray:
    """A (nested) JSON value to a canonical array; the dtype follows the values (TF Serving REST)."""
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting (numpy refuses inhomogeneous shapes)
        raise DecodeError("shape", "ragged nested lists") from exc
    kind = array.dtype.kind
    if kind in "fiub":
        return canonical(array)
    if kind == "U" or kind == "O":
        return _strings_or_numbers(np.asarray(value, dtype=TEXT) if kind == "U" else array)
    raise DecodeError("dtype", f"unexpected JSON values ({array.dtype})")


def _strings_or_numbers(array: np.ndarray) -> np.ndarray:
    """Object arrays: str and b64 values (a string tensor), or ints too large for int64 (a float tensor)."""
    items = array.ravel().tolist()
    if all(type(item) is str for item in items):
        return array.astype(TEXT, copy=False)
    if any(type(item) is str or type(item) is dict for item in items):
        strings: list[str | bytes] = []
        for item in items:
            if type(item) is str:
                strings.append(item)
            elif is_b64(item):
                strings.append(b64_text(item))
            else:
                raise DecodeError("dtype", f"a string tensor holds a {type(item).__name__}")
        return object_array(strings).reshape(array.shape)
    if all(type(item) is int or type(item) is float for item in items):
        return np.asarray(items, dtype=FLOAT64).reshape(array.shape)
    raise DecodeError("dtype", "JSON values of mixed or invalid types")


KIND_BOOL, KIND_INT, KIND_FLOAT, KIND_TEXT = "bool", "int", "float", "text"


def typed_json_array(value: Any, kind: str) -> np.ndarray:
    """A (nested or flat) JSON value whose element kind is declared (Open Inference Protocol `data`)."""
    array = json_array(value)
    have = array.dtype.kind
    if kind == KIND_TEXT:
        ok = have == "O" or array.size == 0
    elif kind == KIND_BOOL:
        ok = have == "b" or array.size == 0
    elif kind == KIND_INT:
        ok = have == "i" or array.size == 0
    else:
        ok = have in "if" or array.size == 0
    if not ok:
        raise DecodeError("dtype", f"{array.dtype} values for a {kind} tensor")
    if array.size == 0:
        return _empty(kind, array.shape)
    return array.astype(FLOAT64) if kind == KIND_FLOAT else array


def _empty(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = {KIND_TEXT: TEXT, KIND_BOOL: np.dtype(np.bool_), KIND_INT: INT64}.get(kind, FLOAT64)
    return np.empty(shape, dtype=dtype)
