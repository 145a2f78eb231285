"""A captured inference call as the shadow is asked it: the REST path, or the gRPC method and request bytes.

The request body is sent as captured. Only when the shadow knows the model under another name, or is asked another
version, does the request change: on REST the path names them; on gRPC the model spec inside the request does, so
the request's top-level protobuf fields are walked (each skipped by its length prefix, the tensors never decoded)
and only the model spec is written anew.

Field numbers (tensorflow_serving/apis/*.proto, kserve grpc_predict_v2.proto): PredictRequest,
ClassificationRequest, RegressionRequest: model_spec = 1; ModelSpec: name = 1, version = 2 (Int64Value, value = 1),
signature_name = 3, version_label = 4. ModelInferRequest: model_name = 1, model_version = 2.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple
from urllib.parse import quote

from sidecar.messages.protowire import MalformedMessage, read_varint
from sidecar.messages.records import API_TFSERVING, API_V2

MAX_FIELDS = 1_000_000  # top-level fields of a request walked before giving up
GRPC_METHODS = {
    (API_TFSERVING, "predict"): "/tensorflow.serving.PredictionService/Predict",
    (API_TFSERVING, "classify"): "/tensorflow.serving.PredictionService/Classify",
    (API_TFSERVING, "regress"): "/tensorflow.serving.PredictionService/Regress",
    (API_V2, "infer"): "/inference.GRPCInferenceService/ModelInfer",
}


class Unsupported(ValueError):
    """The call cannot be put to the shadow (an unknown method, malformed bytes)."""


class Naming(NamedTuple):
    """The model and version a shadow call names; `changed` when they differ from the captured call's."""

    model: str
    version: str
    label: str
    changed: bool


def naming(model: str, version: str, label: str, renamed: str | None, asked: str) -> Naming:
    """What the shadow is asked: `renamed` (or the captured model) at `asked` (a number is a version, anything else
    a label); without `asked` the captured version or label, but none when the model is renamed."""
    if asked:
        number = asked.isdigit()
        new = Naming(renamed or model, asked if number else "", "" if number else asked, True)
    elif renamed:
        new = Naming(renamed, "", "", True)
    else:
        return Naming(model, version, label, False)
    return new._replace(changed=(new.model, new.version, new.label) != (model, version, label))


def rest_path(api: str, method: str, name: Naming) -> str:
    model = quote(name.model, safe="")
    if api == API_V2:
        version = f"/versions/{quote(name.version or name.label, safe='')}" if name.version or name.label else ""
        return f"/v2/models/{model}{version}/infer"
    if api == API_TFSERVING and method in ("predict", "classify", "regress"):
        if name.version:
            return f"/v1/models/{model}/versions/{name.version}:{method}"
        if name.label:
            return f"/v1/models/{model}/labels/{quote(name.label, safe='')}:{method}"
        return f"/v1/models/{model}:{method}"
    raise Unsupported(f"no REST route for {api} {method}")


def grpc_method(api: str, method: str) -> str:
    path = GRPC_METHODS.get((api, method))
    if path is None:
        raise Unsupported(f"no gRPC method for {api} {method}")
    return path


def compressed(body: bytes) -> bool:
    """Whether a captured gRPC request is a compressed message still in its 5-byte frame (as the h2 engine keeps it;
    a protobuf message cannot start with 0x01, field number 0)."""
    return len(body) >= 5 and body[0] == 1 and int.from_bytes(body[1:5], "big") == len(body) - 5


def grpc_message(body: bytes, limit: int) -> bytes:
    """The message of a captured gRPC request: a compressed one unframed and inflated (gzip or deflate), refused
    beyond `limit` bytes; any other the captured bytes themselves."""
    if not compressed(body):
        return body
    inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # gzip or zlib header, told apart by the bytes
    try:
        message = inflater.decompress(body[5:], limit)
    except zlib.error as exc:
        raise Unsupported(f"a compressed request that does not inflate: {exc}") from None
    if inflater.unconsumed_tail:
        raise Unsupported(f"a compressed request inflating to more than {limit} bytes")
    if not inflater.eof:
        raise Unsupported("a truncated compressed request")
    return message


def grpc_request(api: str, request: bytes, name: Naming) -> bytes:
    """The request bytes naming `name` (the captured bytes themselves when nothing changed)."""
    if not name.changed:
        return request
    if api == API_V2:
        head = _string(1, name.model.encode()) + (_string(2, name.version or name.label) if name.version or name.label
                                                  else b"")
        return head + b"".join(request[start:stop] for number, start, stop in _fields(request) if number not in (1, 2))
    spec = b""
    signature = b""
    parts: list[bytes] = []
    for number, start, stop in _fields(request):
        if number == 1:
            spec = request[start:stop]
        else:
            parts.append(request[start:stop])
    for number, start, stop in _fields(_payload(spec)):
        if number == 3:
            signature = _payload(spec)[start:stop]
    body = _string(1, name.model.encode())
    if name.version:
        body += _string(2, _key(1, 0) + _varint(int(name.version)))
    body += signature
    if name.label:
        body += _string(4, name.label)
    return _string(1, body) + b"".join(parts)


def _string(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _key(number, 2) + _varint(len(data)) + data


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(data, pos)
    except MalformedMessage as exc:
        raise Unsupported(f"malformed protobuf request ({exc})") from None


def _fields(data: bytes) -> list[tuple[int, int, int]]:
    """Top-level fields as (number, start, stop): [start, stop) spans the whole field, key included."""
    fields: list[tuple[int, int, int]] = []
    pos = 0
    while pos < len(data):
        if len(fields) >= MAX_FIELDS:
            raise Unsupported("a request with too many top-level fields")
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise Unsupported(f"malformed protobuf request (wire type {wire_type})")
        if pos > len(data) or number == 0:
            raise Unsupported("malformed protobuf request (a field runs past the end)")
        fields.append((number, start, pos))
    return fields


def _payload(field: bytes) -> bytes:
    """The payload of one whole length-delimited field (key and length skipped)."""
    if not field:
        return b""
    _, pos = _read_varint(field, 0)
    length, pos = _read_varint(field, pos)
    return field[pos:pos + length]
