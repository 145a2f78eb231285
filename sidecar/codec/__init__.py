"""Codec: captured exchanges (bytes) to named arrays with a leading instance axis. Runs in worker processes.

    exchange = decode_exchange(record)   # raises DecodeError(reason) for anything undecodable

Dispatch is on (record.protocol, record.api, record.method): TF Serving REST and gRPC predict, classify and
regress; Open Inference Protocol (V2) REST and gRPC infer. The request is always decoded; the response only
when the exchange succeeded (`record.ok`), otherwise `outputs` is empty. gRPC method names may be given as
the verb ("predict"), the RPC name ("Predict", "ModelInfer") or the full path ("/pkg.Service/Predict").
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.codec import tfserving_grpc, tfserving_rest, v2
from sidecar.codec.bodies import request_bytes, response_bytes
from sidecar.codec.errors import REASONS, DecodeError
from sidecar.codec.exchange import DEFAULT_INPUT, DEFAULT_OUTPUT, SCORES_OUTPUT, Exchange
from sidecar.messages.records import API_TFSERVING, API_V2, PROTOCOL_GRPC, PROTOCOL_REST, CaptureRecord

__all__ = [
    "DEFAULT_INPUT",
    "DEFAULT_OUTPUT",
    "REASONS",
    "SCORES_OUTPUT",
    "DecodeError",
    "Exchange",
    "decode_exchange",
]

Decoder = Callable[[bytes, bytes | None], Exchange]

_DECODERS: dict[tuple[str, str, str], Decoder] = {
    (PROTOCOL_REST, API_TFSERVING, "predict"): tfserving_rest.decode_predict,
    (PROTOCOL_REST, API_TFSERVING, "classify"): tfserving_rest.decode_classify,
    (PROTOCOL_REST, API_TFSERVING, "regress"): tfserving_rest.decode_regress,
    (PROTOCOL_GRPC, API_TFSERVING, "predict"): tfserving_grpc.decode_predict,
    (PROTOCOL_GRPC, API_TFSERVING, "classify"): tfserving_grpc.decode_classify,
    (PROTOCOL_GRPC, API_TFSERVING, "regress"): tfserving_grpc.decode_regress,
    (PROTOCOL_REST, API_V2, "infer"): v2.decode_rest,
    (PROTOCOL_GRPC, API_V2, "infer"): v2.decode_grpc,
}
_METHOD_ALIASES = {"modelinfer": "infer"}


def decode_exchange(record: CaptureRecord) -> Exchange:
    """Decode one captured exchange; DecodeError (and no other exception) for bytes that cannot be read."""
    method = _method(record.method)
    decoder = _DECODERS.get((record.protocol, record.api, method))
    if decoder is None:
        raise DecodeError("unsupported", f"{record.protocol} {record.api} {method[:40]!r}")
    request = request_bytes(record)
    if not request:
        raise DecodeError("empty", "empty request")
    return decoder(request, response_bytes(record) if record.ok else None)


def _method(name: str) -> str:
    verb = name.rsplit("/", 1)[-1].strip().lower()
    return _METHOD_ALIASES.get(verb, verb)
