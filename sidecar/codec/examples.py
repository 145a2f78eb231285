"""tf.Example features (classify/regress inputs, gRPC protos or REST JSON) to one array per feature.

Each example maps feature names to a value list of one kind (float, int64 or bytes). Context features are
merged into every example; a feature present in both keeps the example's value (TF Serving serialises the
context first, so the example's entry wins the protobuf map merge).

bytes_list values (and REST `{"b64": ...}` values) are `str` when valid UTF-8 and the exact `bytes` otherwise
(an encoded image), like every string in the codec.

Columns: a feature with exactly one value in every example gives (n,); the same k values everywhere gives
(n, k). Absent features and differing lengths are padded to the longest list, with NaN for numbers (int
features then become float64) or None for strings, so missing values stay visible to data-quality checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.codec.arrays import FLOAT64, INT64, TEXT, text_array
from sidecar.codec.errors import DecodeError
from sidecar.codec.jsonvalues import b64_text, is_b64

FLOAT, INT, BYTES = "float", "int", "bytes"
FeatureValues = tuple[str | None, Sequence[Any] | np.ndarray]
"""(kind, or None when the list is empty; the values: a list or a 1-D float64/int64/object array of str|bytes)."""
Row = dict[str, FeatureValues]

_NO_VALUES: FeatureValues = (None, ())
_JSON_KINDS: dict[type, str] = {float: FLOAT, int: INT, bool: INT, str: BYTES, bytes: BYTES}  # bytes: decoded b64


def feature_columns(rows: list[Row]) -> dict[str, np.ndarray]:
    """One (n, ...) array per feature name seen in any row."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {name: _column(name, [row.get(name) for row in rows]) for name in names}


def _column(name: str, cells: list[FeatureValues | None]) -> np.ndarray:
    kinds = {cell[0] for cell in cells if cell is not None and cell[0] is not None}
    if BYTES in kinds and len(kinds) > 1:
        raise DecodeError("dtype", f"feature {name!r} mixes bytes and numbers across examples")
    text = BYTES in kinds
    lengths = [-1 if cell is None else len(cell[1]) for cell in cells]
    width = max(lengths)
    try:
        if lengths[0] >= 0 and lengths.count(lengths[0]) == len(lengths):
            target = TEXT if text else FLOAT64 if FLOAT in kinds or not kinds else INT64
            column = np.array([cell[1] for cell in cells if cell is not None], dtype=target)
            return column.reshape(len(cells)) if width == 1 else column.reshape(len(cells), width)
        padded = np.full((len(cells), width), None if text else np.nan, dtype=TEXT if text else FLOAT64)
        for index, cell in enumerate(cells):
            if cell is not None and len(cell[1]):
                padded[index, : len(cell[1])] = cell[1]
    except OverflowError as exc:
        raise DecodeError("dtype", f"feature {name!r} holds an integer beyond int64") from exc
    return padded[:, 0] if width == 1 else padded


def merged_rows(examples: Iterable[Row], context: Row | None) -> list[Row]:
    if not context:
        return list(examples)
    return [{**context, **row} for row in examples]


def example_row(example: tf_pb2.Example) -> Row:
    row: Row = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            row[name] = (FLOAT, np.asarray(feature.float_list.value, dtype=FLOAT64))
        elif kind == "int64_list":
            row[name] = (INT, np.asarray(feature.int64_list.value, dtype=INT64))
        elif kind == "bytes_list":
            row[name] = (BYTES, text_array(feature.bytes_list.value))
        else:
            row[name] = _NO_VALUES
    return row


def json_example_row(example: Any) -> Row:
    """A REST example: {feature: value or list}; JSON bools are int64 0/1, like TF Serving's converter."""
    if not isinstance(example, Mapping):
        raise DecodeError("json", "an example is not a JSON object")
    row: Row = {}
    for name, content in example.items():
        kind = _JSON_KINDS.get(type(content))
        row[name] = (kind, [content]) if kind is not None else _json_feature(name, content)
    return row


def _json_feature(name: str, content: Any) -> FeatureValues:
    items = content if isinstance(content, list) else [content]
    if not items:
        return _NO_VALUES
    kinds = {_JSON_KINDS.get(type(item)) for item in items}
    if None in kinds:  # b64 objects (bytes), or values no feature can hold
        items = [b64_text(item) if is_b64(item) else item for item in items]
        kinds = {_JSON_KINDS.get(type(item)) for item in items}
        if None in kinds:
            bad = next(item for item in items if type(item) not in _JSON_KINDS)
            raise DecodeError("dtype", f"feature {name!r} holds a {type(bad).__name__}")
    if len(kinds) > 1:
        raise DecodeError("dtype", f"feature {name!r} mixes value types")
    return kinds.pop(), items
