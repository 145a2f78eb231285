"""TF Serving's REST JSON <-> numpy tensors, with its rules and error messages (tensorflow_serving/util/json_tensor.cc).

Requests: `instances` (row format: one value per row, or one object per row with every named input) or
`inputs` (columnar: one value, or an object with every named input); `{"b64": ...}` for DT_STRING values; bare
`NaN`/`Infinity` accepted; integer types reject `1.0`; float types reject integers they cannot hold exactly.
Responses: `predictions` (row) or `outputs` (columnar); one output is written without its name; DT_STRING
outputs named `*_bytes` are written as `{"b64": ...}`; floats in their shortest round-tripping form with a
trailing `.0` on whole numbers, and `NaN`/`Infinity`/`-Infinity` for non-finite values.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.testbed.examples import decode_b64, json_type_name
from sidecar.testbed.model import Array
from sidecar.testbed.status import Code, ServingError, invalid_argument
from sidecar.testbed.tensors import DT, NUMPY_DTYPES, dtype_name

ROW = "row"
COLUMNAR = "columnar"
_FLOAT24 = (1 << 24) - 1
_FLOAT53 = (1 << 53) - 1
_FLOAT32_MAX = 3.4028234663852886e38
_INT_RANGES: dict[int, tuple[int, int]] = {
    DT.DT_INT32: (-(2**31), 2**31 - 1), DT.DT_INT16: (-(2**31), 2**31 - 1), DT.DT_INT8: (-(2**31), 2**31 - 1),
    DT.DT_UINT8: (-(2**31), 2**31 - 1), DT.DT_INT64: (-(2**63), 2**63 - 1), DT.DT_UINT32: (0, 2**32 - 1),
    DT.DT_UINT64: (0, 2**64 - 1),
}


# --- documents ----------------------------------------------------------------------------------------------

def parse_document(body: bytes) -> dict[str, Any]:
    """Parse a request body; TF Serving accepts NaN and Infinity tokens and wants a top-level object."""
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except UnicodeDecodeError as exc:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {describe(doc)} Is not object")
    return doc


def describe(value: Any) -> str:
    """A JSON value as TF Serving prints it inside error messages (pretty-printed)."""
    return json.dumps(value, indent=4, ensure_ascii=False)


def signature_name(doc: dict[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {describe(doc)} not formatted correctly. 'signature_name' key must be "
                               "a string value.")
    return name


# --- requests -----------------------------------------------------------------------------------------------

def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(f"JSON Value: {describe(value)} Type: {json_type_name(value)} is not of expected type: "
                            f"{dtype_name(dtype)}")


def _convert(value: Any, dtype: int) -> Any:
    """One JSON scalar as a Python value of the tensor's dtype (TF Serving's AddValueToTensor)."""
    if dtype in (DT.DT_FLOAT, DT.DT_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        limit = _FLOAT24 if dtype == DT.DT_FLOAT else _FLOAT53
        lossy = abs(value) > limit if isinstance(value, int) else (
            dtype == DT.DT_FLOAT and math.isfinite(value) and abs(value) > _FLOAT32_MAX)
        if lossy:
            target = "float" if dtype == DT.DT_FLOAT else "double"
            raise invalid_argument(f"Cannot convert JSON value: {describe(value)} to {target} without loss of "
                                   "precision.")
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == DT.DT_STRING:
        if isinstance(value, dict):
            if not _is_b64(value):
                raise invalid_argument(f"JSON Value: {describe(value)} not formatted correctly for base64 data")
            return decode_b64(value["b64"])
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode()
    if dtype == DT.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise ServingError(Code.UNIMPLEMENTED, f"Conversion of JSON Value: {describe(value)} to type: {dtype_name(dtype)}")


def _dense_shape(value: Any) -> list[int]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {describe(value)} found at incorrect level: {level + 1} in the JSON "
                                   f"DOM. Expected at level: {rank}")
        if isinstance(value, dict) and dtype != DT.DT_STRING:
            raise _type_error(value, dtype)
        out.append(_convert(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                               f"{shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _to_array(values: list[Any], shape: list[int], dtype: int) -> Array:
    np_dtype = NUMPY_DTYPES[dtype]
    if dtype == DT.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in _INT_RANGES and dtype not in (DT.DT_INT64, DT.DT_UINT64):
        return np.array(values, dtype=np.int64).astype(np_dtype).reshape(shape)
    return np.array(values, dtype=np_dtype).reshape(shape)


def tensor_from_json(value: Any, dtype: int) -> Array:
    shape = _dense_shape(value)
    values: list[Any] = []
    _fill(value, 0, shape, dtype, values)
    return _to_array(values, shape, dtype)


def _status_text(error: ServingError) -> str:
    return f"{error.code.name}: {error.message}"


def tensors_from_request(doc: dict[str, Any], infos: Mapping[str, tf_pb2.TensorInfo]) -> tuple[str, dict[str, Array]]:
    """The request's input tensors and its format (ROW for `instances`, COLUMNAR for `inputs`)."""
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: {signature_name(doc) or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise invalid_argument(f"JSON Value: {describe(doc)} Not formatted correctly expecting only one of "
                                   "'inputs' or 'instances' keys to exist ")
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {describe(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {describe(doc)} No values in 'instances' array")
        return ROW, _from_instances(instances, infos)
    if "inputs" in doc:
        return COLUMNAR, _from_inputs(doc["inputs"], infos)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list[Any], infos: Mapping[str, tf_pb2.TensorInfo]) -> dict[str, Array]:
    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    objects = is_object(instances[0])
    names = sorted(infos)
    values: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}

    def add(item: Any, name: str) -> None:
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        flat: list[Any] = []
        _fill(item, 0, shape, infos[name].dtype, flat)
        if name not in shapes:
            shapes[name] = shape
            values[name] = []
        elif math.prod(shapes[name]) != len(flat):
            raise invalid_argument(f"Expecting tensor size: {math.prod(shapes[name])} but got: {len(flat)}")
        elif shapes[name] != shape:
            raise invalid_argument(f"Expecting shape [{','.join(map(str, shapes[name]))}] but got: "
                                   f"[{','.join(map(str, shape))}]")
        values[name].extend(flat)

    for index, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as exc:
                    raise invalid_argument(f"Failed to process element: {index} key: {name} of 'instances' list. "
                                           f"Error: {_status_text(exc)}") from None
            if sorted(element) != names:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{describe(element)} keys must be equal to: {','.join(names)}")
        else:
            if is_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, names[0])
            except ServingError as exc:
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. Error: "
                                       f"{_status_text(exc)}") from None
    return {name: _to_array(values[name], [len(instances), *shapes[name]], infos[name].dtype) for name in values}


def _from_inputs(value: Any, infos: Mapping[str, tf_pb2.TensorInfo]) -> dict[str, Array]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        (name, info), = infos.items()
        return {name: tensor_from_json(value, info.dtype)}
    tensors: dict[str, Array] = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = tensor_from_json(value[name], infos[name].dtype)
    return tensors


# --- responses ----------------------------------------------------------------------------------------------

def format_float(value: float, single: bool = True) -> str:
    """TF Serving's WriteDecimal: 6 significant digits when they round-trip, else full precision."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:.6g}"
    if single:
        if struct.unpack("f", struct.pack("f", float(text)))[0] != value:
            text = f"{value:.9g}"
    elif float(text) != value:
        text = f"{value:.17g}"
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text


def _scalar_writer(array: Array, name: str) -> Any:
    kind = array.dtype.kind
    if kind == "f":
        single = array.dtype.itemsize <= 4
        return lambda value: format_float(float(value), single)
    if kind == "b":
        return lambda value: "true" if value else "false"
    if kind in "iu":
        return lambda value: str(int(value))
    if kind == "O" or kind == "S":
        if name.endswith("_bytes"):
            return lambda value: '{"b64": "' + base64.b64encode(bytes(value)).decode() + '"}'
        return lambda value: json.dumps(bytes(value).decode("utf-8", "replace"), ensure_ascii=False)
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nested(items: Iterator[str], shape: tuple[int, ...]) -> str:
    if not shape:
        return next(items)
    return "[" + ", ".join(_nested(items, shape[1:]) for _ in range(shape[0])) + "]"


def tensor_to_json(array: Array, name: str) -> str:
    array = np.asarray(array)
    write = _scalar_writer(array, name)
    return _nested(iter([write(value) for value in array.reshape(-1).tolist()]), array.shape)


def _row(array: Array, index: int) -> Array:
    return np.asarray(array[index], dtype=array.dtype)


def predict_response(outputs: Mapping[str, Array], request_format: str) -> str:
    """The Predict response body: `predictions` for row requests, `outputs` for columnar ones."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if request_format == COLUMNAR:
        if len(names) == 1:
            return '{"outputs": ' + tensor_to_json(outputs[names[0]], names[0]) + "}"
        return '{"outputs": {' + ", ".join(
            f"{json.dumps(name)}: {tensor_to_json(outputs[name], name)}" for name in names) + "}}"
    batch = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: "
                                   f"{batch}")
        batch = array.shape[0]
    rows: list[str] = []
    for index in range(batch):
        if len(names) == 1:
            rows.append(tensor_to_json(_row(outputs[names[0]], index), names[0]))
        else:
            rows.append("{" + ", ".join(f"{json.dumps(name)}: {tensor_to_json(_row(outputs[name], index), name)}"
                                        for name in names) + "}")
    return '{"predictions": [' + ", ".join(rows) + "]}"


def classify_response(results: list[list[tuple[str, float]]]) -> str:
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ("[" + ", ".join(f"[{json.dumps(label, ensure_ascii=False)}, {format_float(score)}]"
                            for label, score in row) + "]" for row in results)
    return '{"results": [' + ", ".join(rows) + "]}"


def regress_response(values: list[float]) -> str:
    if not values:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(format_float(value) for value in values) + "]}"


def error_body(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)
