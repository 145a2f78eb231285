"""Decoded tensors -> feature matrices: the input features, the model's output and the task it implies.

Inputs: every input tensor becomes columns, inputs in name order, none left out:
- numbers: flattened per instance, named `"{input}[{i}]"` (or `"{input}"` when each instance holds a scalar);
- encoded images (string tensors whose values are PNG, JPEG, GIF, BMP or WebP bytes, one per instance): decoded
  to `IMAGE_SIZE` x `IMAGE_SIZE` RGB pixels in [0, 1], named `"{input}[{i}]"` (needs Pillow, the `images` extra);
- other strings: per value a category code (through a per-column vocabulary), named like numbers, and a summary
  of the text (length and the share of letters, digits and spaces), named `"{input}[{i}]#{summary}"`. The code is
  analysed when the reference shows few levels, the summary otherwise: never one category per distinct value.
The first exchange of a model fixes the schema (input names, dtypes, per-instance shapes, encodings); later
exchanges that break it are reported as data-quality issues and left out of the analysis.

Kinds (`infer_kinds`) come from the element type, the signature's when the server declared one, else the data's:
floats are numeric whatever their values; integers, booleans and string codes are categorical only with at most
`max_categories` distinct values in the reference; pixels and text summaries are numeric. A per-model `kinds`
setting overrides both.

Outputs: one output is analysed (configurable, else the one that looks like probabilities, else the first
numeric one). Its type and values decide the task: an integer output of one value per instance is class ids;
rows of k >= 2 probabilities summing to 1, or one column within [0, 1], are classification; other floats are
regression. Classify and regress calls state their task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from sidecar.codec import DEFAULT_INPUT, DEFAULT_OUTPUT
from sidecar.detectors.summaries import OTHER
from sidecar.messages.results import CLASSIFICATION, REGRESSION
from sidecar.worker import images
from sidecar.worker.signature import BOOL, FLOAT, INT, STRING, Signature

NUMERIC = "numeric"
CATEGORICAL = "categorical"
EXCLUDED = "excluded"  # a column whose information another column carries (a text's code or its summary)
PREDICTED_CLASS = "predicted_class"
VOCABULARY_CAP = 1000  # distinct strings per column; later ones share the code VOCABULARY_CAP, named OTHER
TEXT_CELLS_KEPT = 20_000  # text values whose code and summary are kept, over all text columns of a model
TEXT_CELL_KEY_LENGTH = 256  # longest value kept
_NONE_KEY = ("none",)
_STRING_KEY_LENGTH = 64  # long strings (binary payloads) are keyed by their prefix
_PROBABILITY_TOLERANCE = 1e-3
MAX_SENT_PROBABILITIES = 32
IMAGE_WIDTH = images.IMAGE_SIZE * images.IMAGE_SIZE * 3  # columns of one decoded RGB image
_PREFERRED_OUTPUTS = ("probabilities", "probs", "scores", "predictions", "outputs", "output_0")

# how a tensor becomes columns
RAW = "raw"
IMAGE = "image"
TEXT = "text"
# where a column's kind came from
FROM_SIGNATURE = "signature"
FROM_DATA = "data"
FROM_CONFIG = "config"
# what a column holds
VALUE = "value"
PIXEL = "pixel"
CODE = "code"


class TensorSpec(NamedTuple):
    """An input's schema: name, dtype as decoded (`float64`, `int64`, `bool`, `string`), shape per instance, how it
    becomes columns (`raw`, `image`, `text`) and the element type the model server declared (`float`, `int`,
    `bool`, `string`), if it did."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str = RAW
    declared: str | None = None

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def width(self) -> int:
        """Columns this tensor becomes."""
        if self.encoding == IMAGE:
            return self.elements * IMAGE_WIDTH
        if self.encoding == TEXT:
            return self.elements * (1 + len(images.TEXT_SUMMARY_NAMES))
        return self.elements

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    @property
    def element_type(self) -> str:
        """`float`, `int`, `bool` or `string`: the declared type, else the decoded one."""
        if self.declared in (FLOAT, INT, BOOL, STRING):
            return self.declared
        if self.is_string:
            return STRING
        if self.dtype == "bool":
            return BOOL
        return INT if self.dtype.startswith(("int", "uint")) else FLOAT


def dtype_name(array: np.ndarray) -> str:
    kind = array.dtype.kind
    if kind in "OSU":
        return STRING
    return str(array.dtype)


def tensor_spec(name: str, array: np.ndarray, declared: str | None = None) -> TensorSpec:
    spec = TensorSpec(name, dtype_name(array), tuple(int(size) for size in array.shape[1:]), RAW, declared)
    if spec.is_string:
        first = array.reshape(array.shape[0], -1)[0].tolist() if array.shape[0] else []
        encoded = spec.elements == 1 and len(first) == 1 and images.looks_like_image(first[0])
        spec = spec._replace(encoding=IMAGE if encoded and images.pillow_available() else TEXT)
    return spec


class Column(NamedTuple):
    """One feature column: its name, the input it comes from, and what it holds (`value`, `pixel`, `code` or a
    text summary's name)."""

    name: str
    input: str
    role: str


class Extracted(NamedTuple):
    """The features of one exchange: `values` is (instances, features), or None when the schema was broken."""

    values: np.ndarray | None
    issues: dict[tuple[str, str], int]  # (input, "shape" | "dtype" | "missing" | "undecodable") -> instances


class InputFeatures:
    """The fixed mapping from input tensors to feature columns, learned from the first exchange."""

    def __init__(self, specs: list[TensorSpec], vocabularies: Mapping[str, list[str]] | None = None) -> None:
        self._layout(specs)
        self._vocabularies: dict[int, dict[str, int]] = {column: {} for column in self.string_columns}
        for name, values in (vocabularies or {}).items():
            column = self._positions.get(name, -1)
            if column in self._vocabularies:
                self._vocabularies[column] = {value: code for code, value in enumerate(values)}
        self._text_cells: dict[int, dict[Any, tuple[float, ...]]] = {}  # text column -> value -> its columns
        self._text_cells_kept = 0

    def _layout(self, specs: list[TensorSpec]) -> None:
        self.specs = sorted(specs, key=lambda spec: spec.name)
        self.columns: list[Column] = []
        for spec in self.specs:
            self.columns.extend(_columns(spec))
        self.names = [column.name for column in self.columns]
        self._positions = {name: index for index, name in enumerate(self.names)}
        self._spec_names = {spec.name for spec in self.specs}
        self.string_columns = [index for index, column in enumerate(self.columns) if column.role == CODE]

    def adopt_name(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A schema learned from an unnamed REST input takes the name another call (gRPC) gives that input."""
        if len(self.specs) == 1 and self.specs[0].name == DEFAULT_INPUT and len(arrays) == 1:
            [name] = arrays
            if name != DEFAULT_INPUT:
                self._layout([self.specs[0]._replace(name=name)])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], signature: Signature | None = None) -> InputFeatures:
        """The schema of a model's first exchange; the signature (when the server gave one) names a single unnamed
        REST input and declares the element types."""
        declared = signature.inputs if signature is not None else {}
        if len(arrays) == 1 and DEFAULT_INPUT in arrays and len(declared) == 1:
            arrays = {next(iter(declared)): arrays[DEFAULT_INPUT]}
        return cls([tensor_spec(name, array, declared[name].dtype if name in declared else None)
                    for name, array in arrays.items()])

    @property
    def width(self) -> int:
        return len(self.names)

    def vocabularies(self) -> dict[str, list[str]]:
        """Strings per string column, in code order (code = position)."""
        return {self.names[column]: list(vocab) for column, vocab in self._vocabularies.items()}

    def categories(self, column: int) -> list[str] | None:
        """The name of each code of a string column (`names[code]`), None for other columns: its strings, and once
        the vocabulary is full `OTHER` for the code the later strings share (`VOCABULARY_CAP`)."""
        vocab = self._vocabularies.get(column)
        if vocab is None:
            return None
        return [*vocab, OTHER] if len(vocab) >= VOCABULARY_CAP else list(vocab)

    def extract(self, arrays: Mapping[str, np.ndarray], instances: int) -> Extracted:
        """Feature matrix of one exchange; a broken schema gives `values=None` and the issues found.

        An input the schema does not know is reported (issue `shape`) and ignored; a missing input, a changed
        per-instance shape or a switch between strings and numbers (issue `dtype`) makes the exchange unusable.
        Integers and floats are interchangeable: JSON bodies give `1` as an integer and `1.5` as a float. Images
        that cannot be decoded are NaN pixels and counted (issue `undecodable`).
        """
        issues: dict[tuple[str, str], int] = {}
        arrays = aligned(arrays, self._spec_names, DEFAULT_INPUT)
        for name in arrays:
            if name not in self._spec_names:
                issues[(name, "shape")] = instances
        usable = True
        parts: list[np.ndarray] = []
        position = 0
        for spec in self.specs:
            array = arrays.get(spec.name)
            if array is None:
                issues[(spec.name, "missing")] = instances
                usable = False
                continue
            if tuple(int(size) for size in array.shape[1:]) != spec.shape or array.shape[0] != instances:
                issues[(spec.name, "shape")] = instances
                usable = False
                continue
            if (array.dtype.kind in "OSU") != spec.is_string or array.dtype.kind == "c":
                issues[(spec.name, "dtype")] = instances
                usable = False
                continue
            if usable:
                flat = array.reshape(instances, -1)
                if spec.encoding == IMAGE:
                    pixels, failed = images.decode_images(flat[:, 0].tolist(), images.IMAGE_SIZE)
                    if failed:
                        issues[(spec.name, "undecodable")] = failed
                    parts.append(pixels)
                elif spec.encoding == TEXT:
                    parts.append(self._text_columns(flat, position))
                else:
                    parts.append(flat.astype(np.float64))
            position += spec.width
        if not usable:
            return Extracted(None, issues)
        values = np.concatenate(parts, axis=1) if parts else np.empty((instances, 0))
        return Extracted(values, issues)

    def _text_columns(self, flat: np.ndarray, first_column: int) -> np.ndarray:
        """Per value: its code, then its summary; both are kept for the values seen before (`_text_cell`).

        Why cell by cell with what is known kept: exchanges come one request at a time, mostly one instance each,
        and working column by column with numpy cost a worker about 420 us per instance of the 84 string columns
        of bench/bench_product.py's body, 77% of its time behind `sidecar run` (py-spy); this way 44 us (a
        value never seen before: 170 us, one at a time or in batches of 256 that took 120 us column by column).
        """
        per_value = 1 + len(images.TEXT_SUMMARY_NAMES)
        instances, width = flat.shape
        columns = [first_column + offset * per_value for offset in range(width)]
        known = [self._text_cells.setdefault(column, {}) for column in columns]
        cells: list[tuple[float, ...]] = []
        for row in flat.tolist():
            for column, cache, value in zip(columns, known, row, strict=True):
                key = value if type(value) is str else _cache_key(value)
                cell = cache.get(key) if key is not None else None
                cells.append(cell if cell is not None else self._text_cell(column, cache, key, value))
        return np.array(cells, dtype=np.float64).reshape(instances, width * per_value)

    def _text_cell(self, column: int, cache: dict[Any, tuple[float, ...]], key: Any, value: Any) -> tuple[float, ...]:
        """A value's code and summary, kept when there is room (`TEXT_CELLS_KEPT` values, of at most
        `TEXT_CELL_KEY_LENGTH` characters: long free text seldom repeats). Exact: a value's code never changes once
        given, and its summary is a function of it."""
        cell = (float(_code(self._vocabularies[column], value)), *images.text_summary(value))
        if key is not None and self._text_cells_kept < TEXT_CELLS_KEPT and (
                not isinstance(value, (str, bytes)) or len(value) <= TEXT_CELL_KEY_LENGTH):
            cache[key] = cell
            self._text_cells_kept += 1
        return cell

    def _encode(self, values: Sequence[Any] | np.ndarray, column: int) -> np.ndarray:
        vocab = self._vocabularies[column]
        return np.array([_code(vocab, value) for value in values], dtype=np.float64)

    def encode_strings(self, column: int, values: np.ndarray) -> np.ndarray:
        """Codes of raw string values of one string column (reference files)."""
        return self._encode(values.reshape(-1), column)

    def to_meta(self) -> dict[str, Any]:
        return {"specs": [[spec.name, spec.dtype, list(spec.shape), spec.encoding, spec.declared]
                          for spec in self.specs],
                "vocabularies": self.vocabularies()}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> InputFeatures:
        specs = [TensorSpec(str(item[0]), str(item[1]), tuple(int(size) for size in item[2]),
                            str(item[3]) if len(item) > 3 else RAW, item[4] if len(item) > 4 else None)
                 for item in meta["specs"]]
        return cls(specs, meta.get("vocabularies") or {})


def _columns(spec: TensorSpec) -> list[Column]:
    def element(i: int) -> str:
        return f"{spec.name}[{i}]" if spec.shape else spec.name

    if spec.encoding == IMAGE:
        return [Column(f"{spec.name}[{i}]", spec.name, PIXEL) for i in range(spec.width)]
    if spec.encoding == TEXT:
        columns: list[Column] = []
        for i in range(spec.elements):
            columns.append(Column(element(i), spec.name, CODE))
            columns.extend(Column(f"{element(i)}#{summary}", spec.name, summary)
                           for summary in images.TEXT_SUMMARY_NAMES)
        return columns
    return [Column(element(i), spec.name, VALUE) for i in range(spec.elements)]


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


def _code(vocab: dict[str, int], value: Any) -> int:
    """A string value's code in its column's vocabulary, given it when new and there is room."""
    key = _string_key(value)
    code = vocab.get(key)
    if code is None:
        code = len(vocab) if len(vocab) < VOCABULARY_CAP else VOCABULARY_CAP
        if code < VOCABULARY_CAP:
            vocab[key] = code
    return code


def _cache_key(value: Any) -> Any:
    """The key under which a text cell's value is kept: bytes apart from str, None as itself; None (not kept) for
    anything else: numbers in a string column are odd, and -0.0 equals 0.0 while NaN equals nothing."""
    if isinstance(value, bytes):
        return (bytes, value)
    if value is None:
        return _NONE_KEY
    return None


def _string_key(value: Any) -> str:
    if isinstance(value, bytes):
        value = value[:_STRING_KEY_LENGTH * 4].decode("utf-8", "replace")
    return str(value)[:_STRING_KEY_LENGTH]


class Kinds(NamedTuple):
    """Per column: its kind (`numeric`, `categorical`, `excluded`) and where that came from."""

    kinds: list[str]
    sources: list[str]


def infer_kinds(values: np.ndarray, features: InputFeatures, max_categories: int,
                overrides: Mapping[str, str] | None = None) -> Kinds:
    """Column kinds from the element types and the reference `values` (see the module docstring).

    `overrides` maps a column or an input name to `numeric` or `categorical` (a text's code can only be
    categorical)."""
    overrides = overrides or {}
    kinds: list[str] = []
    sources: list[str] = []
    specs = {spec.name: spec for spec in features.specs}
    for index, column in enumerate(features.columns):
        spec = specs[column.input]
        source = FROM_SIGNATURE if spec.declared is not None else FROM_DATA
        levels = _levels(values[:, index]) if column.role in (VALUE, CODE) else 0
        if column.role == PIXEL:
            kind = NUMERIC
        elif column.role == CODE:
            kind = CATEGORICAL if levels <= max_categories else EXCLUDED
        elif column.role != VALUE:  # a text summary: analysed when its code is not
            kind = NUMERIC if kinds[-1 - images.TEXT_SUMMARY_NAMES.index(column.role)] == EXCLUDED else EXCLUDED
        elif spec.element_type == FLOAT:
            kind = NUMERIC
        else:
            kind = CATEGORICAL if levels <= max_categories else NUMERIC
        wanted = overrides.get(column.name, overrides.get(column.input))
        if wanted in (NUMERIC, CATEGORICAL) and column.role in (VALUE, PIXEL):
            kind, source = wanted, FROM_CONFIG
        kinds.append(kind)
        sources.append(source)
    return Kinds(kinds, sources)


def _levels(column: np.ndarray) -> int:
    finite = column[np.isfinite(column)]
    return int(np.unique(finite).size) if finite.size else 0


class OutputView(NamedTuple):
    """The analysed output of one exchange: (instances, k) values and, for classify calls, the class labels.
    `integers`: the output's element type is an integer (declared by the server, else as decoded)."""

    name: str
    values: np.ndarray
    labels: list[str] | None
    scalar: bool  # one value per instance (shape (n,)), so features are named without an index
    method: str
    integers: bool = False


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
                preferred: str | None, known: str | None = None,
                signature: Signature | None = None) -> OutputView | None:
    """The analysed output; `known` is the output analysed so far (an unnamed REST output matches it)."""
    declared = signature.outputs if signature is not None else {}
    if known is not None:
        outputs = aligned(outputs, {known}, DEFAULT_OUTPUT)
        if preferred is None and known in outputs:
            preferred = known
    elif len(outputs) == 1 and DEFAULT_OUTPUT in outputs and len(declared) == 1:
        outputs = {next(iter(declared)): outputs[DEFAULT_OUTPUT]}
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
    element = declared[name].dtype if name in declared else None
    integers = element in (INT, BOOL) if element is not None else array.dtype.kind in "iub"
    return OutputView(name, values, labels, array.ndim == 1, method, integers)


def looks_like_probabilities(values: np.ndarray) -> bool:
    """Rows of k >= 2 values in [0, 1] summing to 1, or one column in [0, 1]; rows with a NaN or infinity are
    left out (and no finite row at all is not probabilities)."""
    values = values[np.all(np.isfinite(values), axis=1)] if values.ndim == 2 else values
    if values.size == 0:
        return False
    if values.min() < 0.0 or values.max() > 1.0:
        return False
    if values.shape[1] == 1:
        return True
    return bool(np.all(np.abs(values.sum(axis=1) - 1.0) <= _PROBABILITY_TOLERANCE))


def is_class_ids(view: OutputView, configured_classification: bool) -> bool:
    """One value per instance that names a class: an integer output, or (when the task is configured as
    classification) integer values that are not all 0 and 1."""
    if view.values.shape[1] != 1 or view.method in ("classify", "regress"):
        return False
    if view.integers:
        return True
    if not configured_classification:
        return False
    finite = view.values[np.isfinite(view.values)]
    return bool(finite.size and np.all(finite == np.round(finite)) and finite.min() >= 0 and finite.max() > 1)


def infer_task(view: OutputView, class_ids: bool = False) -> str | None:
    """The task this exchange's output points to; None when it has no finite row to tell by."""
    if view.method == "classify":
        return CLASSIFICATION
    if view.method == "regress":
        return REGRESSION
    if class_ids:
        return CLASSIFICATION
    if not np.any(np.all(np.isfinite(view.values), axis=1)):
        return None
    return CLASSIFICATION if looks_like_probabilities(view.values) else REGRESSION


def predicted_classes(values: np.ndarray, class_ids: bool = False) -> np.ndarray:
    """Class index per instance: the value itself for class ids, argmax of k >= 2 scores, or `p >= 0.5` for a
    single probability column. A NaN class id is -1."""
    if class_ids:
        column = values[:, 0]
        return np.where(np.isfinite(column), column, -1).astype(np.int64)
    classes: np.ndarray = (values[:, 0] >= 0.5) if values.shape[1] == 1 else np.argmax(values, axis=1)
    return classes.astype(np.int64)


class OutputFeatures(NamedTuple):
    values: np.ndarray  # (instances, features)
    names: list[str]
    kinds: list[str]


def output_features(values: np.ndarray, name: str, scalar: bool, task: str, max_features: int,
                    class_ids: bool = False) -> OutputFeatures:
    """Classification: the predicted class (categorical) and the probability columns (none for class ids);
    regression: the values."""
    width = min(values.shape[1], max_features)
    names = [name] if scalar and width == 1 else [f"{name}[{i}]" for i in range(width)]
    columns = values[:, :width]
    if task == CLASSIFICATION:
        classes = predicted_classes(values, class_ids).astype(np.float64)[:, None]
        if class_ids:
            return OutputFeatures(classes, [PREDICTED_CLASS], [CATEGORICAL])
        return OutputFeatures(np.concatenate([classes, columns], axis=1), [PREDICTED_CLASS, *names],
                              [CATEGORICAL] + [NUMERIC] * width)
    return OutputFeatures(columns, names, [NUMERIC] * width)


def predictions(view: OutputView, task: str, class_ids: bool = False) -> list[Any]:
    """JSON-able predicted value per instance (see `sidecar.messages.results.PredictedInstance`).

    Class ids are sent as integers (a NaN one as None). Beyond `MAX_SENT_PROBABILITIES` classes only the winner is
    sent (its index, or its label for classify calls), which is what the feedback store keeps of a multiclass
    prediction anyway; results stay small.
    """
    values = view.values
    if task == CLASSIFICATION:
        if class_ids:
            return [int(v) if v == v and abs(v) < 2**62 else None for v in values[:, 0].tolist()]
        if values.shape[1] > MAX_SENT_PROBABILITIES:
            winners = predicted_classes(values).tolist()
            return [view.labels[w] for w in winners] if view.labels is not None else winners
        if view.labels is not None:
            return [[[label, score] for label, score in zip(view.labels, row, strict=True)] for row in values.tolist()]
        if values.shape[1] == 1:
            return [[1.0 - p, p] for p in values[:, 0].tolist()]
        return values.tolist()  # type: ignore[no-any-return]
    return (values[:, 0] if values.shape[1] == 1 else values).tolist()  # type: ignore[no-any-return]

