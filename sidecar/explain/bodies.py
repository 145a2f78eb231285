"""Predict bodies <-> the feature rows KernelSHAP perturbs, in an explainer process.

A client's body is decoded by the same codec the analysis uses, and its tensors become feature columns through the
model's saved input schema (`reference.json`: `InputFeatures`), so an attribution's feature is named exactly as the
analysis names it (`x[0]`, `x[1]`, `b`: inputs in name order, each flattened). The rows KernelSHAP asks about are
turned back into a body of the shape the client sent: row format (`instances`, bare values or `{input: value}`
objects) or columnar (`inputs`, one tensor or `{input: tensor}`), each input reshaped to its per-instance shape and
written as the element type it has (integers stay integers: TF Serving refuses `1.0` for an integer input), with the
client's `signature_name`. Only numeric inputs can be explained: strings (text, encoded images) have no values in
between to perturb, so a body or a schema holding them is refused with a 400 naming the input.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from sidecar.codec import DEFAULT_INPUT, DEFAULT_OUTPUT, DecodeError
from sidecar.codec.tfserving_rest import predict_inputs, predict_outputs
from sidecar.explain.errors import ExplainError, UnexplainableError
from sidecar.worker.features import IMAGE, RAW, InputFeatures, TensorSpec
from sidecar.worker.signature import BOOL, INT

ROWS = "instances"
COLUMNS = "inputs"
_KEPT_KEYS = ("signature_name",)


class BodyShape(NamedTuple):
    """How a body holds its inputs: `key` (`instances` or `inputs`), whether they are named, and the inputs' specs
    in feature order (names as the client gave them)."""

    key: str
    named: bool
    specs: tuple[TensorSpec, ...]
    kept: tuple[tuple[str, Any], ...] = ()  # other keys of the client's body sent along (signature_name)

    @classmethod
    def rows_for(cls, features: InputFeatures) -> BodyShape:
        """The body the feature importance sends: row format; inputs named when there are several."""
        return cls(ROWS, len(features.specs) > 1, tuple(features.specs))

    def body(self, rows: np.ndarray) -> dict[str, Any]:
        """A predict body asking about `rows` (n, features)."""
        count = rows.shape[0]
        tensors: dict[str, list[Any]] = {}
        position = 0
        for spec in self.specs:
            part = rows[:, position:position + spec.elements].reshape((count, *spec.shape))
            position += spec.elements
            tensors[spec.name] = _typed(part, spec)
        if not self.named:
            [value] = tensors.values()
            body: dict[str, Any] = {self.key: value}
        elif self.key == ROWS:
            body = {ROWS: [{name: values[index] for name, values in tensors.items()} for index in range(count)]}
        else:
            body = {COLUMNS: tensors}
        body.update(self.kept)
        return body


def _typed(part: np.ndarray, spec: TensorSpec) -> list[Any]:
    element = spec.element_type
    if element == INT:
        return np.rint(part).astype(np.int64).tolist()  # type: ignore[no-any-return]
    if element == BOOL:
        return (part >= 0.5).tolist()  # type: ignore[no-any-return]
    return part.tolist()  # type: ignore[no-any-return]


def request_rows(body: dict[str, Any], features: InputFeatures | None) -> tuple[np.ndarray, InputFeatures, BodyShape]:
    """The client's instances as feature rows, the schema naming their columns (the saved one, else the body's own)
    and the body's shape; a 400 `ExplainError` for anything that cannot be explained."""
    try:
        arrays = predict_inputs(body)
    except DecodeError as exc:
        raise ExplainError(400, f"the body is not a predict request the model server would take: {exc}") from None
    for name, array in sorted(arrays.items()):
        if array.dtype.kind not in "fiub":
            raise ExplainError(400, f"input {_shown(name)} holds {_what(array)}, not numbers: KernelSHAP explains "
                                    "numeric inputs only")
    counts = {int(array.shape[0]) if array.ndim else 0 for array in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise ExplainError(400, "the inputs do not hold the same number of instances (at least one)")
    [count] = counts
    if features is None:
        features = InputFeatures.from_arrays(arrays)
    check_explainable(features)
    extracted = features.extract(arrays, count)
    if extracted.values is None or extracted.issues:
        found = ", ".join(f"{_shown(name)}: {issue}" for (name, issue), _ in sorted(extracted.issues.items()))
        expected = ", ".join(f"{spec.name} {list(spec.shape)}" for spec in features.specs)
        raise ExplainError(400, f"the instances do not match the model's inputs as the analysis learned them "
                                f"({expected} per instance): {found}")
    rows = extracted.values
    bad = np.flatnonzero(~np.all(np.isfinite(rows), axis=1))
    if bad.size:
        raise ExplainError(400, f"instance {int(bad[0])} holds a value that is not a finite number")
    named = not (len(arrays) == 1 and DEFAULT_INPUT in arrays)
    specs = tuple(features.specs)
    if not named:
        specs = (specs[0]._replace(name=DEFAULT_INPUT),)
    key = ROWS if ROWS in body else COLUMNS
    kept = tuple((name, body[name]) for name in _KEPT_KEYS if name in body)
    return rows, features, BodyShape(key, named, specs, kept)


def check_explainable(features: InputFeatures) -> None:
    """An `UnexplainableError` (400) when the model has an input that is not numbers (text or encoded images)."""
    for spec in features.specs:
        if spec.is_string or spec.encoding != RAW:
            what = "encoded images" if spec.encoding == IMAGE else "strings"
            raise UnexplainableError(400, f"input {_shown(spec.name)} holds {what}, not numbers: KernelSHAP "
                                          "explains numeric inputs only")


def answer_values(answer: dict[str, Any], output: str | None) -> np.ndarray:
    """The explained output's values (n, k) of a predict answer (row or columnar); `output`: the output the
    analysis chose, used when the model has several."""
    try:
        arrays = predict_outputs(answer)
    except DecodeError as exc:
        raise ExplainError(502, f"the model server's answer holds no readable outputs: {exc}") from None
    if len(arrays) == 1:
        [array] = arrays.values()
    elif output is not None and output in arrays:
        array = arrays[output]
    else:
        names = ", ".join(sorted(arrays))
        raise ExplainError(409, f"the model has several outputs ({names}) and the analysis has not chosen one yet "
                                "to explain")
    if array.dtype.kind not in "fiub" or array.ndim == 0:
        name = next((name for name, value in arrays.items() if value is array), DEFAULT_OUTPUT)
        raise ExplainError(400, f"output {_shown(name)} holds {_what(array)}, not numbers: it cannot be explained")
    return array.reshape(array.shape[0], -1).astype(np.float64)


def _what(array: np.ndarray) -> str:
    return "strings" if array.dtype.kind in "OSU" else f"{array.dtype} values"


def _shown(name: str) -> str:
    return "(unnamed)" if name == DEFAULT_INPUT else repr(name)
