"""Decoded tensors -> feature matrices: the input features, the model's output and the task it implies.

Inputs: every input tensor is flattened per instance into columns named `"{input}[{i}]"` (or `"{input}"` when
each instance holds a scalar), inputs in name order, at most `max_features` columns (the rest are ignored and
counted). String tensors become category codes through a per-column vocabulary. The first exchange of a model
fixes the schema (input names, dtypes, per-instance shapes); later exchanges that break it are reported as
data-quality issues and left out of the analysis.

Outputs: one output is analysed (configurable, else the one that looks like probabilities, else the first
numeric one). Its values decide the task: rows of k >= 2 probabilities summing to 1, or one column within
[0, 1], mean classification; anything else regression. Classify and regress calls state their task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from sidecar.codec import DEFAULT_INPUT, DEFAULT_OUTPUT
from sidecar.detect.results import CLASSIFICATION, REGRESSION

NUMERIC = "numeric"
CATEGORICAL = "categorical"
STRING = "string"
PREDICTED_CLASS = "predicted_class"
VOCABULARY_CAP = 1000  # distinct strings per column; later ones share the code VOCABULARY_CAP
_STRING_KEY_LENGTH = 64  # long strings (binary payloads) are keyed by their prefix
_PROBABILITY_TOLERANCE = 1e-3
MAX_SENT_PROBABILITIES = 32
_PREFERRED_OUTPUTS = ("probabilities", "probs", "scores", "predictions", "outputs", "output_0")


class TensorSpec(NamedTuple):
    """An input's schema: name, dtype (`float32`, `int64`, `bool`, `string`, ...) and shape per instance."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def width(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING


def dtype_name(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind in "OSU":
        return STRING
    return str(array.dtype)


def tensor_spec(name: str, array: np.ndarray) -> TensorSpec:
    return TensorSpec(name, dtype_name(array), tuple(int(size) for size in array.shape[1:]))


class Extracted(NamedTuple):
    """The features of one exchange: `values` is (instances, features), or None when the schema was broken."""

    values: np.ndarray | None
    issues: dict[tuple[str, str], int]  # (input, "shape" | "dtype" | "missing") -> instances


class InputFeatures:
    """The fixed mapping from input tensors to feature columns, learned from the first exchange."""

    def __init__(self, specs: list[TensorSpec], max_features: int,
                 vocabularies: Mapping[str, list[str]] | None = None) -> None:
        self.max_features = max_features
        self._layout(specs)
        self._vocabularies: dict[int, dict[str, int]] = {column: {} for column in self.string_columns}
        for name, values in (vocabularies or {}).items():
            column = self.names.index(name) if name in self.names else -1
            if column in self._vocabularies:
                self._vocabularies[column] = {value: code for code, value in enumerate(values)}

    def _layout(self, specs: list[TensorSpec]) -> None:
        self.specs = sorted(specs, key=lambda spec: spec.name)
        self.names: list[str] = []
        self.columns: list[tuple[int, int]] = []  # (spec index, leading flat values kept) per spec kept
        total = 0
        for index, spec in enumerate(self.specs):
            width = spec.width
            total += width
            keep = min(width, self.max_features - len(self.names))
            if keep <= 0:
                continue
            self.columns.append((index, keep))
            if spec.shape:
                self.names.extend(f"{spec.name}[{i}]" for i in range(keep))
            else:
                self.names.append(spec.name)
        self.ignored = total - len(self.names)
        self._spec_names = {spec.name for spec in self.specs}
        self._kept = dict(self.columns)
        self.string_columns: list[int] = []
        position = 0
        for index, count in self.columns:
            if self.specs[index].is_string:
                self.string_columns.extend(range(position, position + count))
            position += count

    def adopt_name(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A schema learned from an unnamed REST input takes the name another call (gRPC) gives that input."""
        if len(self.specs) == 1 and self.specs[0].name == DEFAULT_INPUT and len(arrays) == 1:
            [name] = arrays
            if name != DEFAULT_INPUT:
                self._layout([self.specs[0]._replace(name=name)])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], max_features: int) -> InputFeatures:
        return cls([tensor_spec(name, array) for name, array in arrays.items()], max_features)

    @property
    def width(self) -> int:
        return len(self.names)

    def vocabularies(self) -> dict[str, list[str]]:
        """Strings per string column, in code order (code = position)."""
        return {self.names[column]: list(vocab) for column, vocab in self._vocabularies.items()}

    def categories(self, column: int) -> list[str] | None:
        vocab = self._vocabularies.get(column)
        return None if vocab is None else list(vocab)

    def extract(self, arrays: Mapping[str, np.ndarray], instances: int) -> Extracted:
        """Feature matrix of one exchange; a broken schema gives `values=None` and the issues found.

        An input the schema does not know is reported (issue `shape`) and ignored; a missing input, a changed
        per-instance shape or a switch between strings and numbers (issue `dtype`) makes the exchange unusable.
        Integers and floats are interchangeable: JSON bodies give `1` as an integer and `1.5` as a float.
        """
        issues: dict[tuple[str, str], int] = {}
        arrays = aligned(arrays, self._spec_names, DEFAULT_INPUT)
        for name in arrays:
            if name not in self._spec_names:
                issues[(name, "shape")] = instances
        usable = True
        parts: list[np.ndarray] = []
        position = 0
        for index, spec in enumerate(self.specs):
            array = arrays.get(spec.name)
            if array is None:
                issues[(spec.name, "missing")] = instances
                usable = False
                continue
            seen = tensor_spec(spec.name, array)
            if seen.shape != spec.shape or array.shape[0] != instances:
                issues[(spec.name, "shape")] = instances
                usable = False
                continue
            if seen.is_string != spec.is_string or array.dtype.kind == "c":
                issues[(spec.name, "dtype")] = instances
                usable = False
                continue
            count = self._kept.get(index, 0)
            if count and usable:
                flat = array.reshape(instances, -1)[:, :count]
                parts.append(self._encode(flat, position) if spec.is_string else flat.astype(np.float64))
            position += count
        if not usable:
            return Extracted(None, issues)
        values = np.concatenate(parts, axis=1) if parts else np.empty((instances, 0))
        return Extracted(values, issues)

    def _encode(self, flat: np.ndarray, first_column: int) -> np.ndarray:
        codes = np.empty(flat.shape, dtype=np.float64)
        for offset in range(flat.shape[1]):
            vocab = self._vocabularies[first_column + offset]
            column = codes[:, offset]
            for row, value in enumerate(flat[:, offset]):
                key = _string_key(value)
                code = vocab.get(key)
                if code is None:
                    code = len(vocab) if len(vocab) < VOCABULARY_CAP else VOCABULARY_CAP
                    if code < VOCABULARY_CAP:
                        vocab[key] = code
                column[row] = code
        return codes

    def encode_strings(self, column: int, values: np.ndarray) -> np.ndarray:
        """Codes of raw string values of one string column (reference files)."""
        return self._encode(values.reshape(-1, 1), column)[:, 0]

    def to_meta(self) -> dict[str, Any]:
        return {"specs": [[spec.name, spec.dtype, list(spec.shape)] for spec in self.specs],
                "max_features": self.max_features, "vocabularies": self.vocabularies()}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> InputFeatures:
        specs = [TensorSpec(str(name), str(dtype), tuple(int(size) for size in shape))
                 for name, dtype, shape in meta["specs"]]
        return cls(specs, int(meta["max_features"]), meta.get("vocabularies") or {})


def aligned(arrays: Mapping[str, np.ndarray], names: set[str], default: str) -> Mapping[str, np.ndarray]:
    """Match one unnamed tensor with the one named tensor expected, or the other way round.

    REST row-format bodies (`{"instances": [[...]]}`, `{"predictions": [...]}`) do not name a single input or
    output, so the codec calls it `input` / `output`; gRPC names it. Both are the same tensor of the same model.
    """
    if len(arrays) == 1 and len(names) == 1:
        [(name, array)] = arrays.items()
        [expected] = names
        if name != expected and default in (name, expected):
            return {expected: array}
    return arrays


def _string_key(value: Any) -> str:
    if isinstance(value, bytes):
        value = value[:_STRING_KEY_LENGTH * 4].decode("utf-8", "replace")
    return str(value)[:_STRING_KEY_LENGTH]


def infer_kinds(values: np.ndarray, features: InputFeatures, max_categories: int) -> list[str]:
    """Column kinds from the reference: strings, and integer values with few distinct values, are categorical.

    Integer-ness is read from the values, not the dtype, because JSON bodies do not keep `1.0` apart from `1`.
    """
    kinds = [NUMERIC] * features.width
    strings = set(features.string_columns)
    for column in range(features.width):
        if column in strings:
            kinds[column] = CATEGORICAL
            continue
        finite = values[:, column][np.isfinite(values[:, column])]
        if finite.size and np.all(finite == np.round(finite)) and np.unique(finite).size <= max_categories:
            kinds[column] = CATEGORICAL
    return kinds


class OutputView(NamedTuple):
    """The analysed output of one exchange: (instances, k) values and, for classify calls, the class labels."""

    name: str
    values: np.ndarray
    labels: list[str] | None
    scalar: bool  # one value per instance (shape (n,)), so features are named without an index
    method: str


def choose_output(outputs: Mapping[str, np.ndarray], preferred: str | None) -> str | None:
    """The configured output, else one that holds probabilities, a conventional name, or the first numeric one."""
    numeric = sorted(name for name, array in outputs.items() if array.dtype.kind in "fiub" and array.ndim >= 1)
    if preferred is not None:
        return preferred if preferred in numeric else None
    if not numeric:
        return None
    for name in numeric:
        values = outputs[name].reshape(outputs[name].shape[0], -1)
        if values.shape[1] >= 2 and looks_like_probabilities(values.astype(np.float64)):
            return name
    for name in _PREFERRED_OUTPUTS:
        if name in numeric:
            return name
    return numeric[0]


def output_view(outputs: Mapping[str, np.ndarray], classes: np.ndarray | None, method: str,
                preferred: str | None, known: str | None = None) -> OutputView | None:
    """The analysed output; `known` is the output analysed so far (an unnamed REST output matches it)."""
    if known is not None:
        outputs = aligned(outputs, {known}, DEFAULT_OUTPUT)
        if preferred is None and known in outputs:
            preferred = known
    name = choose_output(outputs, preferred)
    if name is None:
        return None
    array = outputs[name]
    values = array.reshape(array.shape[0], -1).astype(np.float64)
    labels: list[str] | None = None
    if classes is not None and classes.size and method == "classify":
        first = classes.reshape(classes.shape[0], -1)[0] if classes.ndim > 1 else classes
        labels = [_string_key(value) for value in first]
        if len(labels) != values.shape[1]:
            labels = None
    return OutputView(name, values, labels, array.ndim == 1, method)


def looks_like_probabilities(values: np.ndarray) -> bool:
    if values.size == 0 or not np.all(np.isfinite(values)):
        return False
    if values.min() < 0.0 or values.max() > 1.0:
        return False
    if values.shape[1] == 1:
        return True
    return bool(np.all(np.abs(values.sum(axis=1) - 1.0) <= _PROBABILITY_TOLERANCE))


def infer_task(view: OutputView) -> str:
    if view.method == "classify":
        return CLASSIFICATION
    if view.method == "regress":
        return REGRESSION
    return CLASSIFICATION if looks_like_probabilities(view.values) else REGRESSION


def predicted_classes(values: np.ndarray) -> np.ndarray:
    """Class index per instance: argmax of k >= 2 scores, or `p >= 0.5` for a single probability column."""
    classes: np.ndarray = (values[:, 0] >= 0.5) if values.shape[1] == 1 else np.argmax(values, axis=1)
    return classes.astype(np.int64)


class OutputFeatures(NamedTuple):
    values: np.ndarray  # (instances, features)
    names: list[str]
    kinds: list[str]


def output_features(values: np.ndarray, name: str, scalar: bool, task: str, max_features: int) -> OutputFeatures:
    """Classification: the predicted class (categorical) and the probability columns; regression: the values."""
    width = min(values.shape[1], max_features)
    names = [name] if scalar and width == 1 else [f"{name}[{i}]" for i in range(width)]
    columns = values[:, :width]
    if task == CLASSIFICATION:
        classes = predicted_classes(values).astype(np.float64)[:, None]
        return OutputFeatures(np.concatenate([classes, columns], axis=1), [PREDICTED_CLASS, *names],
                              [CATEGORICAL] + [NUMERIC] * width)
    return OutputFeatures(columns, names, [NUMERIC] * width)


def predictions(view: OutputView, task: str) -> list[Any]:
    """JSON-able predicted value per instance (see `sidecar.detect.results.PredictedInstance`).

    Beyond `MAX_SENT_PROBABILITIES` classes only the winner is sent (its index, or its label for classify calls),
    which is what the feedback store keeps of a multiclass prediction anyway; results stay small.
    """
    values = view.values
    if task == CLASSIFICATION:
        if values.shape[1] > MAX_SENT_PROBABILITIES:
            winners = predicted_classes(values).tolist()
            return [view.labels[w] for w in winners] if view.labels is not None else winners
        if view.labels is not None:
            return [[[label, score] for label, score in zip(view.labels, row, strict=True)] for row in values.tolist()]
        if values.shape[1] == 1:
            return [[1.0 - p, p] for p in values[:, 0].tolist()]
        return values.tolist()  # type: ignore[no-any-return]
    return (values[:, 0] if values.shape[1] == 1 else values).tolist()  # type: ignore[no-any-return]
