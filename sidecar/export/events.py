"""Payload log events: a capture record becomes a request and/or a response event, shaped as CloudEvents.

The attributes mirror KServe's inference logger (`type` org.kubeflow.serving.inference.request/response,
`id` = the request's id, `specversion` 1.0, extensions `inferenceservicename`, `namespace`, `component`,
`endpoint`) and add the names Seldon's logger sends (`requestid`, `modelid`), so consumers written for either
keep working. Our own extensions: `predictionid`, `model`, `modelversion`, `protocol` (rest or grpc), `api`
(tfserving or v2), `method`, `status` (responses: HTTP status or gRPC code), and, when the body was changed,
`truncated` + `bodysize`, `redacted`, or `bodyomitted` (with the reason). Extension names are lowercase
alphanumeric, as CloudEvents requires. Feedback events use `org.kubeflow.serving.feedback`, which Seldon's
request logger already understands.

Building an event is O(1) (the body is shared, never copied); body work (inflate, redact, truncate) happens in
the sinks' senders, see `sidecar.export.body`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sidecar.messages.records import API_V2, PROTOCOL_GRPC, PROTOCOL_REST, CaptureRecord

REQUEST = "request"
RESPONSE = "response"
FEEDBACK = "feedback"
CE_TYPES = {
    REQUEST: "org.kubeflow.serving.inference.request",
    RESPONSE: "org.kubeflow.serving.inference.response",
    FEEDBACK: "org.kubeflow.serving.feedback",
}
JSON = "application/json"
_PROTO_MESSAGES = {
    ("tfserving", "predict"): ("tensorflow.serving.PredictRequest", "tensorflow.serving.PredictResponse"),
    ("tfserving", "classify"): ("tensorflow.serving.ClassificationRequest",
                                "tensorflow.serving.ClassificationResponse"),
    ("tfserving", "regress"): ("tensorflow.serving.RegressionRequest", "tensorflow.serving.RegressionResponse"),
    (API_V2, "infer"): ("inference.ModelInferRequest", "inference.ModelInferResponse"),
}


@dataclass(frozen=True)
class EventContext:
    """Per-sidecar attributes: CloudEvents `source`, and KServe's `inferenceservicename` and `namespace`."""

    source: str = "urn:tfs-sidecar"
    service: str | None = None
    namespace: str | None = None


class PayloadEvent(NamedTuple):
    """One request, response or feedback body with its metadata (`status`: responses only).

    Every field is a str, bytes, number or None, so the sink queues can hold events as plain tuples, which the
    garbage collector stops tracking: a full queue of a dead sink then adds nothing to the collector's full
    passes (each of which stops the proxy's event loop). `enqueued` (monotonic seconds) and `size` are filled in
    by the queue.
    """

    kind: str
    prediction_id: str
    time: float
    model: str
    version: str
    label: str
    protocol: str
    api: str
    method: str
    body: bytes
    encoding: str = ""
    status: int | None = None
    enqueued: float = 0.0
    size: int = 0

    @property
    def content_type(self) -> str:
        if self.protocol != PROTOCOL_GRPC:
            return JSON
        messages = _PROTO_MESSAGES.get((self.api, self.method))
        if messages is None:
            return "application/x-protobuf"
        message = messages[0] if self.kind == REQUEST else messages[1]
        return f"application/x-protobuf; messagetype={message}"


def events_from_record(record: CaptureRecord, requests: bool = True, responses: bool = True) -> list[PayloadEvent]:
    """The request and/or response event of one exchange (the response is stamped at time + latency)."""
    out = []
    if requests:
        out.append(PayloadEvent(REQUEST, record.prediction_id, record.time, record.model, record.version,
                                record.label, record.protocol, record.api, record.method, record.request,
                                record.request_encoding))
    if responses:
        out.append(PayloadEvent(RESPONSE, record.prediction_id, record.time + record.latency, record.model,
                                record.version, record.label, record.protocol, record.api, record.method,
                                record.response, "", record.status))
    return out


def feedback_event(prediction_id: str, model: str, body: bytes, version: str = "",
                   now: float | None = None) -> PayloadEvent:
    return PayloadEvent(FEEDBACK, prediction_id, time.time() if now is None else now, model, version, "",
                        PROTOCOL_REST, "", "feedback", body)


_second_cache: list[Any] = [None, ""]


def rfc3339(epoch: float) -> str:
    """UTC time with microseconds, e.g. 2024-05-01T12:00:00.250000Z (the second's text is cached: events of
    one second share it)."""
    second = int(epoch // 1)
    if _second_cache[0] != second:
        _second_cache[0] = second
        _second_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    micros = min(round((epoch - second) * 1_000_000), 999_999)
    return f"{_second_cache[1]}.{micros:06d}Z"


def attributes(event: PayloadEvent, context: EventContext) -> dict[str, Any]:
    """CloudEvents context attributes and extensions (names without the `ce-` prefix), before body marks."""
    prediction_id = event.prediction_id
    model = event.model
    attrs: dict[str, Any] = {
        "specversion": "1.0",
        "id": prediction_id,
        "source": context.source,
        "type": CE_TYPES[event.kind],
        "time": rfc3339(event.time),
        "inferenceservicename": context.service or model,
    }
    if context.namespace:
        attrs["namespace"] = context.namespace
    attrs["component"] = "predictor"
    attrs["endpoint"] = event.label or "default"
    attrs["requestid"] = prediction_id
    attrs["modelid"] = model
    attrs["predictionid"] = prediction_id
    attrs["model"] = model
    if event.version:
        attrs["modelversion"] = event.version
    attrs["protocol"] = event.protocol
    if event.api:
        attrs["api"] = event.api
    attrs["method"] = event.method
    if event.status is not None:
        attrs["status"] = event.status
    return attrs
