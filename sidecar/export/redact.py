"""Redaction of named input fields in request bodies (JSON and protobuf), for the payload log only.

JSON (TF Serving REST and Open Inference Protocol REST): the values of named fields become "[REDACTED]" in
- `instances` rows that are objects (`{"instances": [{"age": 3, "ssn": "..."}]}`),
- `inputs` given as a mapping (`{"inputs": {"ssn": [...]}}`),
- V2 `inputs` given as a list of tensors (`{"inputs": [{"name": "ssn", "data": [...]}]}`: `data` is replaced),
- classify/regress `examples` objects and the `context` object.
Unnamed tensors (`{"instances": [[1, 2]]}`, `{"inputs": [[1, 2]]}`) have no field names to match.

Protobuf (gRPC), parsed with our wire-compatible messages:
- PredictRequest: each named entry of `inputs` becomes a DT_STRING TensorProto with the same shape and the
  single value "[REDACTED]" (TF's broadcast rule makes it a valid tensor of that shape),
- ClassificationRequest / RegressionRequest: each named feature of every example (and of the context)
  becomes a bytes_list holding "[REDACTED]",
- ModelInferRequest (V2): each named input becomes datatype BYTES, shape [1], holding "[REDACTED]" (in
  `raw_input_contents` when the request uses raw contents).
Other messages, and bodies that do not parse, raise `RedactionError`; the caller then omits the body rather
than log data it could not redact.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from typing import Any

from sidecar._proto import tf_pb2, tfs_pb2, v2_pb2

REDACTED = "[REDACTED]"
_REDACTED_BYTES = REDACTED.encode()


class RedactionError(ValueError):
    """The body could not be redacted (unparseable, or a message kind without named inputs)."""


def redact_json(body: bytes, fields: Collection[str]) -> tuple[bytes, int]:
    """Return the body with named fields replaced, and how many values were replaced (body unchanged if 0)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RedactionError(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RedactionError("body is not a JSON object")
    count = 0
    instances = document.get("instances")
    if isinstance(instances, list):
        for row in instances:
            count += _redact_object(row, fields)
    inputs = document.get("inputs")
    if isinstance(inputs, dict):
        count += _redact_object(inputs, fields)
    elif isinstance(inputs, list):
        for tensor in inputs:
            if isinstance(tensor, dict) and tensor.get("name") in fields and "data" in tensor:
                tensor["data"] = REDACTED
                count += 1
    examples = document.get("examples")
    if isinstance(examples, list):
        for example in examples:
            count += _redact_object(example, fields)
    count += _redact_object(document.get("context"), fields)
    if count == 0:
        return body, 0
    return json.dumps(document, separators=(",", ":")).encode(), count


def _redact_object(value: Any, fields: Collection[str]) -> int:
    if not isinstance(value, dict):
        return 0
    count = 0
    for name in fields:
        if name in value:
            value[name] = REDACTED
            count += 1
    return count


def redact_protobuf(body: bytes, api: str, method: str, fields: Collection[str]) -> tuple[bytes, int]:
    """Redact a serialized gRPC request message of the given API (tfserving, v2) and method."""
    if api == "tfserving" and method == "predict":
        return _redact_predict(body, fields)
    if api == "tfserving" and method in ("classify", "regress"):
        return _redact_examples(body, method, fields)
    if api == "v2" and method == "infer":
        return _redact_infer(body, fields)
    raise RedactionError(f"no redaction for {api or 'unknown'} {method or 'unknown'} messages")


def _parse(message: Any, body: bytes) -> Any:
    try:
        message.ParseFromString(body)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise RedactionError(f"body does not parse as {type(message).__name__}: {exc}") from None
    return message


def _redact_predict(body: bytes, fields: Collection[str]) -> tuple[bytes, int]:
    request = _parse(tfs_pb2.PredictRequest(), body)
    count = 0
    for name in fields:
        if name in request.inputs:
            shape = tf_pb2.TensorShapeProto()
            shape.CopyFrom(request.inputs[name].tensor_shape)
            request.inputs[name].CopyFrom(tf_pb2.TensorProto(dtype=tf_pb2.DT_STRING, tensor_shape=shape,
                                                             string_val=[_REDACTED_BYTES]))
            count += 1
    return (request.SerializeToString(), count) if count else (body, 0)


def _redact_examples(body: bytes, method: str, fields: Collection[str]) -> tuple[bytes, int]:
    request = _parse(tfs_pb2.ClassificationRequest() if method == "classify" else tfs_pb2.RegressionRequest(), body)
    kind = request.input.WhichOneof("kind")
    examples: list[Any] = []
    if kind == "example_list":
        examples = list(request.input.example_list.examples)
    elif kind == "example_list_with_context":
        examples = [*request.input.example_list_with_context.examples, request.input.example_list_with_context.context]
    count = 0
    for example in examples:
        features = example.features.feature
        for name in fields:
            if name in features:
                features[name].CopyFrom(tf_pb2.Feature(bytes_list=tf_pb2.BytesList(value=[_REDACTED_BYTES])))
                count += 1
    return (request.SerializeToString(), count) if count else (body, 0)


def _redact_infer(body: bytes, fields: Collection[str]) -> tuple[bytes, int]:
    request = _parse(v2_pb2.ModelInferRequest(), body)
    raw = request.raw_input_contents
    count = 0
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in fields:
            continue
        tensor.datatype = "BYTES"
        del tensor.shape[:]
        tensor.shape.append(1)
        tensor.ClearField("contents")
        if index < len(raw):
            raw[index] = struct.pack("<I", len(_REDACTED_BYTES)) + _REDACTED_BYTES
        else:
            tensor.contents.bytes_contents.append(_REDACTED_BYTES)
        count += 1
    return (request.SerializeToString(), count) if count else (body, 0)
