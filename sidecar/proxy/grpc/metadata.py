"""Metadata rules of the gRPC proxy: what passes through each way, what the sidecar reads and what it adds.

gRPC manages some headers itself (pseudo-headers, `grpc-*` keys such as grpc-timeout, content-type, te,
user-agent); those are never copied, the library on each side writes its own. Everything else passes through
unchanged, binary `-bin` values included. The sidecar reads `x-prediction-id` / `x-request-id` (the client's
prediction id) and, when tracing is on, takes `traceparent` / `tracestate` out to send its own instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sidecar.messages.records import LOG_OPT_OUT_HEADER

MetadataValue = str | bytes
Metadatum = tuple[str, MetadataValue]

PREDICTION_ID = "x-prediction-id"
REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

MANAGED_BY_GRPC = frozenset({"content-type", "user-agent", "te", "host", "connection", "content-length",
                             "transfer-encoding", "upgrade", "keep-alive", "proxy-connection"})
_TRACE_KEYS = frozenset({TRACEPARENT, TRACESTATE})


def passes_through(key: str) -> bool:
    return key not in MANAGED_BY_GRPC and not key.startswith(("grpc-", ":"))


class RequestMetadata(NamedTuple):
    """Incoming metadata split into what goes upstream and what the sidecar reads."""

    outgoing: list[Metadatum]
    prediction_id: str | None
    request_id: str | None
    trace_carrier: dict[str, str]  # traceparent/tracestate when tracing took them out; empty otherwise
    log_opt_out: bool = False  # the client sent `x-sidecar-log: off` (kept out of the payload log)


def split_request(incoming: Iterable[Metadatum] | None, take_trace: bool) -> RequestMetadata:
    """One pass over the client's metadata. With `take_trace` the trace headers are removed from `outgoing`."""
    outgoing: list[Metadatum] = []
    prediction_id = request_id = None
    opt_out = False
    carrier: dict[str, str] = {}
    for key, value in incoming or ():
        if key in MANAGED_BY_GRPC or key.startswith(("grpc-", ":")):
            continue
        if key == PREDICTION_ID:
            prediction_id = value if isinstance(value, str) else None
        elif key == REQUEST_ID:
            request_id = value if isinstance(value, str) else None
        elif key == LOG_OPT_OUT_HEADER:
            opt_out = isinstance(value, str) and value.strip().lower() == "off"
        elif take_trace and key in _TRACE_KEYS:
            if isinstance(value, str):
                carrier[key] = value
            continue
        outgoing.append((key, value))
    return RequestMetadata(outgoing, prediction_id, request_id, carrier, opt_out)


def response_initial(upstream: Iterable[Metadatum] | None, prediction_id: str | None) -> tuple[Metadatum, ...]:
    """The upstream's initial metadata with the sidecar's prediction id (replacing any the upstream sent); none for
    calls that make no prediction."""
    kept = [(key, value) for key, value in upstream or () if key != PREDICTION_ID and passes_through(key)]
    if prediction_id is not None:
        kept.append((PREDICTION_ID, prediction_id))
    return tuple(kept)


def response_trailing(upstream: Iterable[Metadatum] | None) -> tuple[Metadatum, ...]:
    return tuple((key, value) for key, value in upstream or () if passes_through(key))
