"""Read which model a serialized gRPC request addresses, straight from the protobuf wire format.

The proxy forwards request bytes untouched; it only needs the model name, version and label for metric labels,
traces and capture records. Decoding whole messages would cost time proportional to the payload (tensors can be
megabytes), so these functions walk the top-level fields, skip every field they do not need by its length
prefix, and decode only the few short strings they look for. Work is bounded by `MAX_FIELDS` fields per message
level and nothing large is copied. Malformed or truncated bytes give empty strings, never an exception.

Field numbers (tensorflow_serving/apis/*.proto, kserve grpc_predict_v2.proto):
- PredictRequest, ClassificationRequest, RegressionRequest, GetModelMetadataRequest, GetModelStatusRequest:
  model_spec = 1.
- MultiInferenceRequest: tasks = 1 (repeated InferenceTask), InferenceTask.model_spec = 1; the first task counts.
- ModelSpec: name = 1, version = 2 (google.protobuf.Int64Value, value = 1), version_label = 4.
- ModelInferRequest (and ModelReadyRequest, ModelMetadataRequest): model_name / name = 1, model_version /
  version = 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from sidecar.messages.protowire import MalformedMessage, read_varint

MAX_FIELDS = 64  # fields examined per message level before giving up
MAX_NAME_BYTES = 1024  # longer names are not plausible model names; they are ignored rather than copied

_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_FIXED32 = 5


class ModelRef(NamedTuple):
    """The model a request addresses; empty strings where the request does not say (or cannot be read)."""

    name: str
    version: str
    label: str


NO_MODEL = ModelRef("", "", "")


def _iter_fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Top-level fields of the message in data[pos:end] as (number, wire type, start, stop), lazily.

    For varint fields start holds the decoded value and stop is -1; for length-delimited fields [start, stop) is
    the payload. At most MAX_FIELDS fields are read; callers stop early once they have what they need.
    """
    for _ in range(MAX_FIELDS):
        if pos >= end:
            return
        key, pos = read_varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise MalformedMessage
        if wire_type == _VARINT:
            value, pos = read_varint(data, pos, end)
            yield number, wire_type, value, -1
            continue
        if wire_type == _LENGTH_DELIMITED:
            length, pos = read_varint(data, pos, end)
            stop = pos + length
        elif wire_type == _FIXED64:
            stop = pos + 8
        elif wire_type == _FIXED32:
            stop = pos + 4
        else:  # groups (3, 4) are not used by these protocols; 6, 7 are invalid
            raise MalformedMessage
        if stop > end:
            raise MalformedMessage
        yield number, wire_type, pos, stop
        pos = stop


def _fields(data: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    return list(_iter_fields(data, pos, end))


def _first_message(data: bytes, pos: int, end: int, number: int) -> tuple[int, int] | None:
    """Bounds of the first length-delimited field `number`, scanning field by field and stopping there."""
    for field, wire_type, start, stop in _iter_fields(data, pos, end):
        if field == number and wire_type == _LENGTH_DELIMITED:
            return start, stop
    return None


def _text(data: bytes, start: int, stop: int) -> str:
    if stop - start > MAX_NAME_BYTES:
        return ""
    return data[start:stop].decode("utf-8", "replace")


def _signed64(value: int) -> int:
    value &= 0xFFFF_FFFF_FFFF_FFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _model_spec(data: bytes, start: int, stop: int) -> ModelRef:
    name = version = label = ""
    for number, wire_type, first, second in _fields(data, start, stop):
        if wire_type != _LENGTH_DELIMITED:
            continue
        if number == 1:
            name = _text(data, first, second)
        elif number == 2:  # Int64Value {int64 value = 1}; absent value means 0
            value = 0
            for inner, inner_type, inner_value, _ in _fields(data, first, second):
                if inner == 1 and inner_type == _VARINT:
                    value = inner_value
            version, label = str(_signed64(value)), ""
        elif number == 4:
            label, version = _text(data, first, second), ""
    return ModelRef(name, version, label)


def peek_model_spec(message: bytes) -> ModelRef:
    """Model of a TF Serving request whose field 1 is a ModelSpec (Predict, Classify, Regress, metadata, status)."""
    try:
        bounds = _first_message(message, 0, len(message), 1)
        return _model_spec(message, *bounds) if bounds is not None else NO_MODEL
    except MalformedMessage:
        return NO_MODEL


def peek_multi_inference(message: bytes) -> ModelRef:
    """Model of a MultiInferenceRequest: the ModelSpec of its first InferenceTask."""
    try:
        task = _first_message(message, 0, len(message), 1)
        if task is None:
            return NO_MODEL
        spec = _first_message(message, task[0], task[1], 1)
        return _model_spec(message, *spec) if spec is not None else NO_MODEL
    except MalformedMessage:
        return NO_MODEL


def peek_v2_model(message: bytes) -> ModelRef:
    """Model of an Open Inference Protocol request: model_name (1) and model_version (2) strings.

    Serializers write fields in number order, so the scan stops at the first field after 2 once the name is
    known instead of skipping through every input tensor.
    """
    name = version = ""
    try:
        for number, wire_type, start, stop in _iter_fields(message, 0, len(message)):
            if number > 2 and name:
                break
            if wire_type == _LENGTH_DELIMITED and number == 1:
                name = _text(message, start, stop)
            elif wire_type == _LENGTH_DELIMITED and number == 2:
                version = _text(message, start, stop)
    except MalformedMessage:
        return NO_MODEL
    return ModelRef(name, version, "")
