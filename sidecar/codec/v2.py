"""Open Inference Protocol (KServe V2) infer exchanges, REST and gRPC, to arrays.

REST: `{"inputs": [{"name", "shape", "datatype", "data"}]}` -> `{"outputs": [...]}` (or `{"error": ...}`),
`data` nested or flat. The binary-data extension (Triton and its clients' default) is read too: the JSON
header is followed by raw tensor bytes, one chunk per tensor whose `parameters.binary_data_size` is set, in
tensor order. The header length (an HTTP header) is not captured; the end of the JSON value marks it.
gRPC: ModelInferRequest/ModelInferResponse with typed `contents`, or one raw buffer per tensor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sidecar._proto import v2_pb2
from sidecar.codec.errors import DecodeError
from sidecar.codec.exchange import Exchange, make_exchange
from sidecar.codec.jsonvalues import load_object
from sidecar.codec.messages import parse
from sidecar.codec.v2_tensors import checked_shape, from_contents, from_json, from_raw

Arrays = dict[str, np.ndarray]
_DECODER = json.JSONDecoder()


def decode_rest(request: bytes, response: bytes | None) -> Exchange:
    inputs = _json_tensors(*_split_binary(request), "inputs")
    outputs: Arrays = {}
    if response is not None:
        header, binary = _split_binary(response)
        if "outputs" in header or "error" not in header:
            outputs = _json_tensors(header, binary, "outputs")
    return make_exchange(inputs, outputs, "infer")


def decode_grpc(request: bytes, response: bytes | None) -> Exchange:
    message = parse(v2_pb2.ModelInferRequest, request)
    inputs = _proto_tensors(message.inputs, message.raw_input_contents, "input")
    outputs: Arrays = {}
    if response is not None:
        reply = parse(v2_pb2.ModelInferResponse, response)
        outputs = _proto_tensors(reply.outputs, reply.raw_output_contents, "output")
    return make_exchange(inputs, outputs, "infer")


def _split_binary(body: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the bytes after it (empty unless the binary-data extension is used)."""
    try:
        return load_object(body), b""
    except DecodeError as error:
        if error.reason != "json":
            raise
        text = body.decode("latin-1")  # one char per byte, so string offsets are byte offsets
        start = len(text) - len(text.lstrip())
        try:
            _, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            raise error from None
        return load_object(body[:end]), body[end:]


def _json_tensors(header: dict[str, Any], binary: bytes, key: str) -> Arrays:
    tensors = header.get(key)
    if tensors is None:
        raise DecodeError("missing", f"no '{key}'")
    if not isinstance(tensors, list):
        raise DecodeError("json", f"'{key}' is not a list")
    arrays: Arrays = {}
    offset = 0
    for tensor in tensors:
        if not isinstance(tensor, dict):
            raise DecodeError("json", f"an entry of '{key}' is not an object")
        for field in ("name", "shape", "datatype"):
            if field not in tensor:
                raise DecodeError("missing", f"a tensor in '{key}' has no '{field}'")
        name, type_name = tensor["name"], tensor["datatype"]
        if not isinstance(name, str) or not isinstance(type_name, str):
            raise DecodeError("json", "tensor name and datatype must be strings")
        shape = checked_shape(tensor["shape"])
        parameters = tensor.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise DecodeError("shape", f"binary data of {name!r} is not in the body")
            arrays[name] = from_raw(type_name, shape, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            arrays[name] = from_json(type_name, shape, tensor["data"])
        else:
            raise DecodeError("missing", f"tensor {name!r} has no data")
    if offset != len(binary):
        raise DecodeError("json", f"{len(binary) - offset} bytes after the JSON body")
    return arrays


def _proto_tensors(tensors: Sequence[Any], raw: Sequence[bytes], side: str) -> Arrays:
    if raw and len(raw) != len(tensors):
        raise DecodeError("missing", f"{len(raw)} raw buffers for {len(tensors)} {side}s")
    arrays: Arrays = {}
    for index, tensor in enumerate(tensors):
        shape = checked_shape(list(tensor.shape))
        if raw:
            arrays[tensor.name] = from_raw(tensor.datatype, shape, raw[index])
        else:
            arrays[tensor.name] = from_contents(tensor.datatype, shape, tensor.contents)
    return arrays
