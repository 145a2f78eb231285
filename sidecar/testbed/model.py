"""Servables (one model version with its signatures) and the registry that resolves a model spec to one.

Backend-neutral: a servable holds its SignatureDefs (our wire-compatible protos, the same bytes TF Serving
reports as metadata) and a `runner` that evaluates one signature on numpy inputs. The TensorFlow backend runs a
loaded SavedModel's signature functions; the numpy backend computes the same functions directly. Validation and
error messages follow TF Serving (tensorflow_serving/servables/tensorflow/predict_util.cc, server_core.cc).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.testbed.status import Code, ServingError, invalid_argument, not_found
from sidecar.testbed.tensors import NUMPY_DTYPES, data_type, dtype_name, shape_of

Array = np.ndarray[Any, Any]
Runner = Callable[[str, Mapping[str, Array]], dict[str, Array]]

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


@dataclass(frozen=True)
class Servable:
    name: str
    version: int
    signature_defs: Mapping[str, tf_pb2.SignatureDef]
    runner: Runner = field(repr=False)

    def signature(self, name: str) -> tuple[str, tf_pb2.SignatureDef]:
        """The named signature (empty = serving_default); FAILED_PRECONDITION when missing, as TF Serving."""
        key = name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(key)
        if signature is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        return key, signature

    def input_infos(self, name: str) -> Mapping[str, tf_pb2.TensorInfo]:
        """Input infos used to read REST JSON; INVALID_ARGUMENT when missing, as TF Serving's REST handler."""
        key = name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(key)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        infos: Mapping[str, tf_pb2.TensorInfo] = signature.inputs
        return infos

    def predict(self, signature_name: str, inputs: Mapping[str, Array],
                output_filter: Sequence[str] = ()) -> tuple[str, dict[str, Array]]:
        """Validate `inputs` against the signature and run it; returns the signature key and the outputs."""
        key, signature = self.signature(signature_name)
        check_inputs(signature, inputs)
        outputs = _check_output_filter(signature, output_filter)
        results = self.run(key, {alias: inputs[alias] for alias in sorted(inputs)})
        return key, {alias: results[alias] for alias in outputs}

    def run(self, signature_key: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run a signature on already validated inputs; backend failures become ServingErrors."""
        try:
            return self.runner(signature_key, inputs)
        except ServingError:
            raise
        except Exception as exc:  # the backends translate their own errors; anything else is internal
            raise ServingError(Code.INTERNAL, f"{type(exc).__name__}: {exc}") from exc


def check_inputs(signature: tf_pb2.SignatureDef, inputs: Mapping[str, Array]) -> None:
    expected = sorted(signature.inputs)
    sent = sorted(inputs)
    if len(sent) != len(expected):
        extra = sorted(set(sent) - set(expected))
        missing = sorted(set(expected) - set(sent))
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(expected)}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}.")
    batch_sizes: dict[str, int] = {}
    for index, alias in enumerate(sent):
        info = signature.inputs.get(alias)
        if info is None:
            raise invalid_argument(f"input tensor alias not found in signature: {alias}. Inputs expected to be in "
                                   f"the set {{{','.join(expected)}}}.")
        array = inputs[alias]
        if data_type(array.dtype) != info.dtype:
            raise invalid_argument(f"Expects arg[{index}] to be {dtype_name(info.dtype)} but "
                                   f"{dtype_name(data_type(array.dtype))} is provided")
        _check_shape(alias, array.shape, info)
        if array.ndim and not info.tensor_shape.unknown_rank and info.tensor_shape.dim[0].size == -1:
            batch_sizes[alias] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"{alias}: {size}" for alias, size in batch_sizes.items())
        raise invalid_argument(f"input tensors must have equal 0th-dimension size, got {sizes}")


def _check_shape(alias: str, shape: tuple[int, ...], info: tf_pb2.TensorInfo) -> None:
    if info.tensor_shape.unknown_rank:
        return
    expected = shape_of(info.tensor_shape)
    if len(shape) != len(expected) or any(want not in (-1, got) for want, got in zip(expected, shape, strict=True)):
        raise invalid_argument(f"input tensor {alias} has shape [{','.join(map(str, shape))}] but the signature "
                               f"expects [{','.join(map(str, expected))}]")


def _check_output_filter(signature: tf_pb2.SignatureDef, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return sorted(signature.outputs)
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                                   f"the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def numpy_dtype(info: tf_pb2.TensorInfo) -> np.dtype[Any]:
    dtype = NUMPY_DTYPES.get(info.dtype)
    if dtype is None:
        raise ServingError(Code.UNIMPLEMENTED, f"data type {dtype_name(info.dtype)} is not supported")
    return dtype


class ModelRegistry:
    """All servables by model name and version, plus version labels (`stable` -> 1)."""

    def __init__(self, servables: Iterable[Servable], labels: Mapping[str, Mapping[str, int]] | None = None,
                 backend: str = "") -> None:
        self.backend = backend
        self._models: dict[str, dict[int, Servable]] = {}
        for servable in servables:
            self._models.setdefault(servable.name, {})[servable.version] = servable
        self.labels = {name: dict(mapping) for name, mapping in (labels or {}).items()}

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[Servable]:
        """Loaded versions of a model, highest first (TF Serving's status order); empty when unknown."""
        versions = self._models.get(name, {})
        return [versions[number] for number in sorted(versions, reverse=True)]

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a ModelSpec designates: a version, a label, or the latest version."""
        if label is not None:
            number = self.labels.get(name, {}).get(label)
            if number is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = number
        versions = self._models.get(name, {})
        if version is None:
            if not versions:
                raise not_found(f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        servable = versions.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(self, name: str, version: int | None = None) -> list[Servable]:
        """GetModelStatus: labels are ignored (as TF Serving does); NOT_FOUND when nothing matches."""
        if version is not None:
            servable = self._models.get(name, {}).get(version)
            if servable is None:
                raise not_found(f"Could not find version {version} of model {name}")
            return [servable]
        versions = self.versions(name)
        if not versions:
            raise not_found(f"Could not find any versions of model {name}")
        return versions
