"""The capture record: one proxied exchange, as bytes, handed from the request path to the analysis."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

PROTOCOL_REST = "rest"
PROTOCOL_GRPC = "grpc"
API_TFSERVING = "tfserving"
API_V2 = "v2"
LOG_OPT_OUT_HEADER = "x-sidecar-log"  # a request header (REST) / metadata key (gRPC) whose value `off` keeps
# the exchange out of the payload log; the analysis still sees it.


class CaptureRecord(NamedTuple):
    """Everything the analysis needs about one exchange; built in O(1) on the request path, never decoded there.

    `status` is the HTTP status for REST and the numeric gRPC status code for gRPC (0 = OK).
    `request_encoding` is the request's Content-Encoding (e.g. "gzip") or "" when the body is plain.
    `log_opt_out` is set when the client sent `X-Sidecar-Log: off`.
    `response_truncated` is set when `response` is not the whole response body: a streamed REST response longer
    than the capture bound (`rest_stream_capture_bytes`) or one that ended early (the client left, the upstream
    stalled or broke off). The bytes kept are the body's first bytes, de-chunked.
    `shadow` names the shadow model server that answered, on a shadow's record (`sidecar.shadow`): then `response`,
    `status` and `latency` are the shadow's and `primary_response` holds the primary's answer to the same request,
    so a worker decodes both from one record. Empty on every record the proxies capture.
    """

    prediction_id: str
    time: float
    model: str
    version: str
    label: str
    protocol: str
    api: str
    method: str
    request: bytes
    response: bytes
    status: int
    latency: float
    request_encoding: str = ""
    log_opt_out: bool = False
    response_truncated: bool = False
    shadow: str = ""
    primary_response: bytes = b""

    @property
    def size(self) -> int:
        return len(self.request) + len(self.response)

    @property
    def ok(self) -> bool:
        return self.status == 200 if self.protocol == PROTOCOL_REST else self.status == 0


# Field positions, for code that keeps records as plain tuples (the capture ring) or as columns (analysis batches).
MODEL_INDEX = CaptureRecord._fields.index("model")
REQUEST_INDEX = CaptureRecord._fields.index("request")
RESPONSE_INDEX = CaptureRecord._fields.index("response")
as_record = partial(tuple.__new__, CaptureRecord)
"""A CaptureRecord from its fields in order: `CaptureRecord._make` without its Python-level length check."""
CaptureRow = tuple[Any, ...]
"""A record's fields as a plain tuple, in `CaptureRecord` order: how the capture ring keeps records and hands them
to its consumers (`as_record` makes one a CaptureRecord again)."""
