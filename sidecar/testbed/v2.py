"""Open Inference Protocol (KServe V2) for the testbed's models: datatypes, metadata and inference, shared by the
REST and gRPC front ends.

A V2 inference runs the model's `serving_default` signature. Input datatypes must match the signature's
(FP32 for DT_FLOAT, BYTES for DT_STRING, ...), as Triton requires. Raw binary contents (gRPC
`raw_input_contents`) are row-major little-endian; BYTES elements there carry a 4-byte little-endian length
prefix each.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2, v2_pb2
from sidecar.testbed.model import DEFAULT_SIGNATURE, Array, ModelRegistry, Servable
from sidecar.testbed.status import invalid_argument, not_found
from sidecar.testbed.tensors import DT, shape_of

SERVER_NAME = "sidecar-testbed"
SERVER_VERSION = "1"
PLATFORM = "tensorflow_savedmodel"

DATATYPES: dict[int, str] = {
    DT.DT_BOOL: "BOOL", DT.DT_UINT8: "UINT8", DT.DT_UINT16: "UINT16", DT.DT_UINT32: "UINT32",
    DT.DT_UINT64: "UINT64", DT.DT_INT8: "INT8", DT.DT_INT16: "INT16", DT.DT_INT32: "INT32", DT.DT_INT64: "INT64",
    DT.DT_HALF: "FP16", DT.DT_FLOAT: "FP32", DT.DT_DOUBLE: "FP64", DT.DT_STRING: "BYTES",
}
NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
# InferTensorContents field per datatype (FP16 has none: raw contents only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def datatype_of(array: Array) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, dtype in NUMPY.items():
        if dtype == array.dtype:
            return name
    raise invalid_argument(f"no V2 datatype for {array.dtype}")


def resolve(registry: ModelRegistry, name: str, version: str = "") -> Servable:
    """A model by name and optional version string; NOT_FOUND in Triton's words."""
    if version:
        if not version.isdigit():
            raise invalid_argument(f"Request for model '{name}' has an invalid version '{version}'")
        if not registry.versions(name) or int(version) not in {s.version for s in registry.versions(name)}:
            raise not_found(f"Request for unknown model: '{name}' version {version} is not found")
        return registry.resolve(name, int(version))
    if not registry.versions(name):
        raise not_found(f"Request for unknown model: '{name}' is not found")
    return registry.resolve(name)


def _tensor_metadata(alias: str, info: tf_pb2.TensorInfo) -> dict[str, Any]:
    return {"name": alias, "datatype": DATATYPES.get(info.dtype, "INVALID"), "shape": list(shape_of(info.tensor_shape))}


def model_metadata(registry: ModelRegistry, servable: Servable) -> dict[str, Any]:
    _, signature = servable.signature(DEFAULT_SIGNATURE)
    return {
        "name": servable.name,
        "versions": [str(s.version) for s in sorted(registry.versions(servable.name), key=lambda s: s.version)],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(alias, signature.inputs[alias]) for alias in sorted(signature.inputs)],
        "outputs": [_tensor_metadata(alias, signature.outputs[alias]) for alias in sorted(signature.outputs)],
    }


def model_metadata_proto(registry: ModelRegistry, servable: Servable) -> v2_pb2.ModelMetadataResponse:
    meta = model_metadata(registry, servable)
    response = v2_pb2.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
    for key in ("inputs", "outputs"):
        for tensor in meta[key]:
            getattr(response, key).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response


def _check_shape(name: str, shape: Sequence[int], count: int) -> tuple[int, ...]:
    if any(size < 0 for size in shape):
        raise invalid_argument(f"input '{name}' has a negative dimension in shape {list(shape)}")
    if math.prod(shape) != count:
        raise invalid_argument(f"unexpected number of elements for input '{name}': shape {list(shape)} needs "
                               f"{math.prod(shape)}, got {count}")
    return tuple(int(size) for size in shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def array_from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> Array:
    """A REST input's `data` (nested or flat, row-major)."""
    if datatype not in NUMPY:
        raise invalid_argument(f"invalid datatype '{datatype}' for input '{name}'")
    flat = _flatten(data)
    dims = _check_shape(name, shape, len(flat))
    if datatype == "BYTES":
        if not all(isinstance(value, str) for value in flat):
            raise invalid_argument(f"input '{name}' of datatype BYTES expects strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [value.encode() for value in flat]
        return array.reshape(dims)
    wants_bool = datatype == "BOOL"
    wants_int = datatype.startswith(("INT", "UINT"))
    for value in flat:
        ok = isinstance(value, bool) if wants_bool else (
            isinstance(value, int) and not isinstance(value, bool) if wants_int else
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise invalid_argument(f"input '{name}' of datatype {datatype} has an invalid value {value!r}")
    try:
        return np.array(flat, dtype=NUMPY[datatype]).reshape(dims)
    except OverflowError:
        raise invalid_argument(f"input '{name}' has a value out of range for {datatype}") from None


def array_from_contents(name: str, datatype: str, shape: Sequence[int],
                        contents: v2_pb2.InferTensorContents) -> Array:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise invalid_argument(f"datatype '{datatype}' of input '{name}' needs raw_input_contents")
    values = list(getattr(contents, field))
    dims = _check_shape(name, shape, len(values))
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(dims)
    return np.array(values, dtype=NUMPY[datatype]).reshape(dims)


def array_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Array:
    if datatype not in NUMPY:
        raise invalid_argument(f"invalid datatype '{datatype}' for input '{name}'")
    if datatype == "BYTES":
        values: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise invalid_argument(f"raw BYTES contents of input '{name}' end inside a length prefix")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise invalid_argument(f"raw BYTES contents of input '{name}' end inside an element")
            values.append(raw[offset:offset + length])
            offset += length
        dims = _check_shape(name, shape, len(values))
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(dims)
    dtype = NUMPY[datatype]
    if len(raw) % dtype.itemsize:
        raise invalid_argument(f"raw contents of input '{name}' are not a whole number of {datatype} elements")
    flat = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
    return flat.reshape(_check_shape(name, shape, len(flat)))


def run(servable: Servable, inputs: Mapping[str, tuple[str, Array]], requested: Sequence[str]) -> dict[str, Array]:
    """Check datatypes against `serving_default` and run it; `inputs` maps name -> (datatype, array)."""
    _, signature = servable.signature(DEFAULT_SIGNATURE)
    for name, (datatype, _) in inputs.items():
        info = signature.inputs.get(name)
        if info is None:
            raise invalid_argument(f"unexpected inference input '{name}' for model '{servable.name}', expecting "
                                   f"{', '.join(sorted(signature.inputs))}")
        expected = DATATYPES.get(info.dtype)
        if datatype != expected:
            raise invalid_argument(f"unexpected datatype {datatype} for inference input '{name}', expecting "
                                   f"{expected}")
    for name in requested:
        if name not in signature.outputs:
            raise invalid_argument(f"unexpected inference output '{name}' for model '{servable.name}'")
    _, outputs = servable.predict(DEFAULT_SIGNATURE, {name: array for name, (_, array) in inputs.items()},
                                  list(dict.fromkeys(requested)))
    return outputs


def contents_of(array: Array) -> tuple[str, v2_pb2.InferTensorContents]:
    datatype = datatype_of(array)
    contents = v2_pb2.InferTensorContents()
    flat = array.reshape(-1)
    if datatype == "BYTES":
        contents.bytes_contents.extend(bytes(value) for value in flat)
    elif datatype in CONTENTS_FIELDS:
        getattr(contents, CONTENTS_FIELDS[datatype]).extend(flat.tolist())
    else:
        raise invalid_argument(f"datatype {datatype} can only be sent as raw contents")
    return datatype, contents


def raw_of(array: Array) -> tuple[str, bytes]:
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return datatype, b"".join(struct.pack("<I", len(bytes(value))) + bytes(value) for value in array.reshape(-1))
    return datatype, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def json_data(array: Array) -> list[Any]:
    """Flat row-major `data` for a REST response (BYTES as UTF-8 text)."""
    if datatype_of(array) == "BYTES":
        return [bytes(value).decode("utf-8", "replace") for value in array.reshape(-1)]
    if array.dtype.kind == "f":
        return [float(np.format_float_positional(value, unique=True, trim="0"))
                if np.isfinite(value) else float(value) for value in array.reshape(-1)]
    return list(array.reshape(-1).tolist())
