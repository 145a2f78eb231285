"""The reference a model's traffic is compared with: collected from traffic or read from a file, kept on disk.

A complete reference is saved under `<state_dir>/models/<safe model name>/` as `reference.npz` (the input
feature matrix and the raw analysed output) and `reference.json` (schema, feature kinds, vocabularies, task,
source), written atomically, so a restarted worker (or sidecar) picks it up instead of collecting again.

Reference files (setting `models: {name: {reference: path}}`):
- `.npz`: arrays by input name (first axis = instances), optionally the analysed output as `output:<name>`;
- `.npy`: one 2-D matrix with a column per input element, inputs in name order;
- `.csv`: a header of input element names (`x[0]`, or `x` for a scalar input; a string input's column holds its
  text, whose code and summary are computed as for traffic), one instance per row.
Encoded image inputs need an `.npz` file (the encoded bytes as an object-free array are not possible in the other
formats).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sidecar.worker.features import IMAGE, InputFeatures

FORMAT_VERSION = 2
OUTPUT_KEY_PREFIX = "output:"
SOURCE_TRAFFIC = "traffic"
SOURCE_FILE = "file"


class ReferenceFileError(ValueError):
    """A reference file cannot be read or does not match the model's inputs; the message says why."""


def safe_name(model: str) -> str:
    """A directory name for a model: its name when already safe, else a cleaned name plus a short checksum."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", model).strip(".") or "_"
    if cleaned == model:
        return model
    return f"{cleaned[:80]}-{zlib.crc32(model.encode()):08x}"


def model_dir(state_dir: Path, model: str) -> Path:
    return state_dir / "models" / safe_name(model)


class OutputSpec(NamedTuple):
    """The analysed output: its name, width (values per instance), scalar-ness, class labels when known, and
    whether it holds class ids (one integer class per instance)."""

    name: str
    width: int
    scalar: bool
    labels: list[str] | None
    class_ids: bool = False


@dataclass
class Reference:
    """A complete reference: input features (n, d) with their kinds, and the raw analysed output (n, k)."""

    inputs: np.ndarray
    kinds: list[str]
    features: InputFeatures
    outputs: np.ndarray | None
    output: OutputSpec | None
    task: str | None
    source: str
    file: str | None
    created: float
    sources: list[str] | None = None  # per input column: where its kind came from (signature, data, config)
    task_source: str | None = None

    @property
    def instances(self) -> int:
        return int(self.inputs.shape[0])

    def save(self, directory: Path) -> Path:
        """Write atomically (npz first, then the json that marks it complete); returns the npz path."""
        directory.mkdir(parents=True, exist_ok=True)
        data_path = directory / "reference.npz"
        meta_path = directory / "reference.json"
        tmp_data = directory / f".reference.npz.{os.getpid()}.tmp"
        with open(tmp_data, "wb") as handle:
            if self.outputs is None:
                np.savez(handle, inputs=self.inputs)
            else:
                np.savez(handle, inputs=self.inputs, outputs=self.outputs)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_data, data_path)
        meta = {
            "version": FORMAT_VERSION, "instances": self.instances, "kinds": self.kinds,
            "features": self.features.to_meta(), "task": self.task, "source": self.source, "file": self.file,
            "created": self.created, "sources": self.sources, "task_source": self.task_source,
            "output": None if self.output is None else {"name": self.output.name, "width": self.output.width,
                                                         "scalar": self.output.scalar, "labels": self.output.labels,
                                                         "class_ids": self.output.class_ids},
        }
        tmp_meta = directory / f".reference.json.{os.getpid()}.tmp"
        tmp_meta.write_text(json.dumps(meta, allow_nan=False), encoding="utf-8")
        os.replace(tmp_meta, meta_path)
        return data_path

    @classmethod
    def load(cls, directory: Path) -> Reference | None:
        """The saved reference, or None when there is none (or it is unreadable or of another format)."""
        try:
            meta = json.loads((directory / "reference.json").read_text(encoding="utf-8"))
            if meta.get("version") != FORMAT_VERSION:
                return None
            with np.load(directory / "reference.npz", allow_pickle=False) as data:
                inputs = np.asarray(data["inputs"], dtype=np.float64)
                outputs = np.asarray(data["outputs"], dtype=np.float64) if "outputs" in data.files else None
        except (OSError, ValueError, KeyError):
            return None
        output = meta.get("output")
        spec = None if output is None else OutputSpec(str(output["name"]), int(output["width"]),
                                                      bool(output["scalar"]), output.get("labels"),
                                                      bool(output.get("class_ids", False)))
        return cls(inputs=inputs, kinds=list(meta["kinds"]), features=InputFeatures.from_meta(meta["features"]),
                   outputs=outputs, output=spec, task=meta.get("task"), source=str(meta["source"]),
                   file=meta.get("file"), created=float(meta["created"]), sources=meta.get("sources"),
                   task_source=meta.get("task_source"))


def saved_path(directory: Path) -> Path:
    return directory / "reference.npz"


class ReferenceCollector:
    """Accumulates the first `target` instances of traffic (inputs and raw outputs, row-aligned)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.collected = 0
        self._inputs: list[np.ndarray] = []
        self._outputs: list[np.ndarray | None] = []

    @property
    def complete(self) -> bool:
        return self.collected >= self.target

    def add(self, inputs: np.ndarray, outputs: np.ndarray | None) -> int:
        """Take rows until the target is reached; returns how many rows of `inputs` were taken."""
        take = min(self.target - self.collected, int(inputs.shape[0]))
        if take <= 0:
            return 0
        self._inputs.append(inputs[:take])
        self._outputs.append(None if outputs is None else outputs[:take])
        self.collected += take
        return take

    def inputs(self) -> np.ndarray:
        return np.concatenate(self._inputs, axis=0)

    def outputs(self, width: int) -> np.ndarray | None:
        """Raw outputs (rows without an output are NaN), or None when no exchange had one."""
        if all(part is None for part in self._outputs):
            return None
        rows = [np.full((inputs.shape[0], width), np.nan) if part is None or part.shape[1] != width else part
                for inputs, part in zip(self._inputs, self._outputs, strict=True)]
        return np.concatenate(rows, axis=0)


def read_reference_file(path: str, features: InputFeatures,
                        output: OutputSpec | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Input features (n, d) and raw outputs (n, k) or None, from a reference file matching `features`."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".npz":
            inputs, outputs = _read_npz(path, features, output)
        elif suffix == ".npy":
            inputs, outputs = _read_npy(path, features), None
        elif suffix == ".csv":
            inputs, outputs = _read_csv(path, features), None
        else:
            raise ReferenceFileError(f"{path}: unsupported reference format (use .npz, .npy or .csv)")
    except OSError as exc:
        raise ReferenceFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if inputs.shape[0] < 2:
        raise ReferenceFileError(f"{path}: needs at least 2 instances, has {inputs.shape[0]}")
    return inputs, outputs


def _read_npz(path: str, features: InputFeatures,
              output: OutputSpec | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except ValueError as exc:
        raise ReferenceFileError(f"{path}: not a readable npz file ({exc})") from None
    inputs = {name: array for name, array in arrays.items() if not name.startswith(OUTPUT_KEY_PREFIX)}
    lengths = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise ReferenceFileError(f"{path}: input arrays must share their first (instance) axis")
    instances = lengths.pop()
    extracted = features.extract(inputs, instances)
    if extracted.values is None:
        problems = ", ".join(f"{name}: {issue}" for (name, issue) in sorted(extracted.issues))
        raise ReferenceFileError(f"{path}: arrays do not match the model's inputs ({problems}); expected "
                                 + ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in features.specs))
    outputs = None
    if output is not None and OUTPUT_KEY_PREFIX + output.name in arrays:
        raw = arrays[OUTPUT_KEY_PREFIX + output.name]
        if raw.shape[0] != instances or raw.reshape(instances, -1).shape[1] != output.width:
            raise ReferenceFileError(f"{path}: {OUTPUT_KEY_PREFIX}{output.name} must have {instances} rows of "
                                     f"{output.width} values")
        outputs = raw.reshape(instances, -1).astype(np.float64)
    return extracted.values, outputs


def _read_npy(path: str, features: InputFeatures) -> np.ndarray:
    try:
        matrix = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ReferenceFileError(f"{path}: not a readable npy file ({exc})") from None
    names = element_names(features)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ReferenceFileError(f"{path}: expected a 2-D matrix with {len(names)} columns "
                                 f"({', '.join(names[:5])}...), got shape {list(matrix.shape)}")
    return _elements_to_features([matrix[:, column] for column in range(matrix.shape[1])], features, path)


def _read_csv(path: str, features: InputFeatures) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ReferenceFileError(f"{path}: empty file")
    header = [name.strip() for name in rows[0]]
    names = element_names(features)
    missing = [name for name in names if name not in header]
    if missing:
        raise ReferenceFileError(f"{path}: header lacks features {', '.join(missing[:10])}"
                                 + (" ..." if len(missing) > 10 else ""))
    body = [row for row in rows[1:] if row]
    if any(len(row) != len(header) for row in body):
        raise ReferenceFileError(f"{path}: every row needs {len(header)} values")
    position = {name: index for index, name in enumerate(header)}
    columns = [np.array([row[position[name]] for row in body], dtype=object) for name in names]
    return _elements_to_features(columns, features, path)


def element_names(features: InputFeatures) -> list[str]:
    """The columns a matrix or CSV reference gives: one per input element (a string is one column, its code and
    summary are computed from it), in the model's feature order."""
    names: list[str] = []
    for spec in features.specs:
        if spec.encoding == IMAGE:
            continue
        names.extend(f"{spec.name}[{i}]" for i in range(spec.elements)) if spec.shape else names.append(spec.name)
    return names


def _elements_to_features(columns: list[np.ndarray], features: InputFeatures, path: str) -> np.ndarray:
    if any(spec.encoding == IMAGE for spec in features.specs):
        raise ReferenceFileError(f"{path}: a model with encoded image inputs needs an .npz reference")
    instances = len(columns[0]) if columns else 0
    arrays: dict[str, np.ndarray] = {}
    position = 0
    for spec in features.specs:
        parts = columns[position:position + spec.elements]
        position += spec.elements
        if spec.is_string:
            block = np.empty((instances, spec.elements), dtype=object)
            for offset, values in enumerate(parts):
                block[:, offset] = [str(value) for value in values]
        else:
            block = np.empty((instances, spec.elements), dtype=np.float64)
            for offset, values in enumerate(parts):
                try:
                    block[:, offset] = [_number(value) for value in values]
                except ValueError:
                    name = f"{spec.name}[{offset}]" if spec.shape else spec.name
                    raise ReferenceFileError(f"{path}: feature {name} holds a non-number") from None
        arrays[spec.name] = block.reshape((instances, *spec.shape))
    extracted = features.extract(arrays, instances)
    if extracted.values is None:
        raise ReferenceFileError(f"{path}: values do not match the model's inputs")
    return extracted.values


def _number(value: Any) -> float:
    if isinstance(value, str):
        text = value.strip()
        return float(text) if text else float("nan")
    return float(value)


def reference_from_arrays(inputs: np.ndarray, kinds: list[str], features: InputFeatures, outputs: np.ndarray | None,
                          output: OutputSpec | None, task: str | None, file: str | None,
                          sources: list[str] | None = None, task_source: str | None = None) -> Reference:
    return Reference(inputs=inputs, kinds=kinds, features=features, outputs=outputs, output=output, task=task,
                     source=SOURCE_FILE if file else SOURCE_TRAFFIC, file=file, created=time.time(), sources=sources,
                     task_source=task_source)
