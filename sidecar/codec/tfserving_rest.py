"""TF Serving REST bodies (tensorflow_serving/util/json_tensor.cc formats) to arrays.

Predict requests: row format `instances` (a list of values for one unnamed input, or a list of
{input: value} objects) or columnar `inputs` (one value, or {input: nested list}). Responses: `predictions`
(row; several outputs give a list of objects) or `outputs` (columnar; one output bare, several an object).
Classify/regress: `{"examples": [...], "context"?: {...}}` -> `{"results": ...}`. A body with `error`
carries no outputs. Without a model signature the dtype follows the JSON values: numbers with a fraction or
exponent are float64, others int64, JSON booleans bool, strings and `{"b64": ...}` str.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sidecar.codec.arrays import FLOAT64, object_array
from sidecar.codec.errors import DecodeError
from sidecar.codec.examples import feature_columns, json_example_row, merged_rows
from sidecar.codec.exchange import DEFAULT_INPUT, DEFAULT_OUTPUT, SCORES_OUTPUT, Exchange, make_exchange
from sidecar.codec.jsonvalues import is_b64, json_array, load_object

Arrays = dict[str, np.ndarray]


def decode_predict(request: bytes, response: bytes | None) -> Exchange:
    inputs = predict_inputs(load_object(request))
    outputs = predict_outputs(load_object(response)) if response is not None else {}
    return make_exchange(inputs, outputs, "predict")


def predict_inputs(body: dict[str, Any]) -> Arrays:
    if "instances" in body:
        if "inputs" in body:
            raise DecodeError("json", "both 'instances' and 'inputs'")
        return _rows(body["instances"], DEFAULT_INPUT, "instances")
    if "inputs" in body:
        return _columns(body["inputs"], DEFAULT_INPUT)
    raise DecodeError("missing", "neither 'instances' nor 'inputs'")


def predict_outputs(body: dict[str, Any]) -> Arrays:
    if "predictions" in body:
        return _rows(body["predictions"], DEFAULT_OUTPUT, "predictions")
    if "outputs" in body:
        return _columns(body["outputs"], DEFAULT_OUTPUT)
    if "error" in body:
        return {}
    raise DecodeError("missing", "neither 'predictions' nor 'outputs'")


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _rows(rows: Any, default_name: str, key: str) -> Arrays:
    """Row format: a list with one entry per instance; entries are values or {name: value} objects."""
    if not isinstance(rows, list):
        raise DecodeError("json", f"'{key}' is not a list")
    if not rows:
        raise DecodeError("empty", f"'{key}' is empty")
    if not _is_named(rows[0]):
        if any(_is_named(row) for row in rows):
            raise DecodeError("shape", f"'{key}' mixes values and named objects")
        return {default_name: json_array(rows)}
    names = rows[0].keys()
    for row in rows:
        if not _is_named(row):
            raise DecodeError("shape", f"'{key}' mixes values and named objects")
        if row.keys() != names:
            raise DecodeError("missing", f"the objects in '{key}' do not all have the same names")
    return {name: json_array([row[name] for row in rows]) for name in names}


def _columns(columns: Any, default_name: str) -> Arrays:
    """Columnar format: one (nested) value, or {name: value}; each value is a whole batch."""
    if _is_named(columns):
        if not columns:
            raise DecodeError("empty", "no named tensors")
        return {name: json_array(value) for name, value in columns.items()}
    return {default_name: json_array(columns)}


def decode_classify(request: bytes, response: bytes | None) -> Exchange:
    inputs = example_inputs(load_object(request))
    if response is None:
        return make_exchange(inputs, {}, "classify")
    body = load_object(response)
    if "results" not in body:
        return _failed(body, inputs, "classify")
    classes, scores = _classifications(body["results"])
    return make_exchange(inputs, {SCORES_OUTPUT: scores}, "classify", classes)


def decode_regress(request: bytes, response: bytes | None) -> Exchange:
    inputs = example_inputs(load_object(request))
    if response is None:
        return make_exchange(inputs, {}, "regress")
    body = load_object(response)
    if "results" not in body:
        return _failed(body, inputs, "regress")
    values = json_array(body["results"])
    if values.ndim != 1 or values.dtype.kind not in "if":
        raise DecodeError("shape", "'results' is not a list of numbers")
    return make_exchange(inputs, {DEFAULT_OUTPUT: values.astype(FLOAT64)}, "regress")


def _failed(body: dict[str, Any], inputs: Arrays, method: str) -> Exchange:
    if "error" not in body:
        raise DecodeError("missing", "neither 'results' nor 'error'")
    return make_exchange(inputs, {}, method)


def example_inputs(body: dict[str, Any]) -> Arrays:
    examples = body.get("examples")
    if examples is None:
        raise DecodeError("missing", "no 'examples'")
    if not isinstance(examples, list):
        raise DecodeError("json", "'examples' is not a list")
    if not examples:
        raise DecodeError("empty", "'examples' is empty")
    context = json_example_row(body["context"]) if "context" in body else None
    return feature_columns(merged_rows((json_example_row(example) for example in examples), context))


def _classifications(results: Any) -> tuple[np.ndarray, np.ndarray]:
    """`[[[label, score], ...], ...]` to labels (n, k) str and scores (n, k) float64."""
    if not isinstance(results, list):
        raise DecodeError("json", "'results' is not a list")
    labels: list[object] = []
    scores: list[object] = []
    width = None
    for classes in results:
        if not isinstance(classes, list) or (width is not None and len(classes) != width):
            raise DecodeError("shape", "classifications differ in length")
        width = len(classes)
        for pair in classes:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                    and type(pair[1]) in (int, float)):
                raise DecodeError("json", "a class is not [label, score]")
            labels.append(pair[0])
            scores.append(pair[1])
    shape = (len(results), width or 0)
    return object_array(labels).reshape(shape), np.asarray(scores, dtype=FLOAT64).reshape(shape)
