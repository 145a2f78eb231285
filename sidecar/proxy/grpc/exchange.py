"""What every forwarded gRPC call shares: its dependencies, its spans, and how its outcome is recorded.

`Exchange` is created once per call through `Exchange.begin`, by the h2 relay and by the grpc.aio engine's
forwarders (`sidecar.proxy.grpc.aio.forwarding` holds what only that engine needs). It stamps the prediction id,
starts the trace spans when tracing is on (and only then), and records the outcome exactly once: one metrics
sample, one capture record for captured methods, the span ends and the upstream health verdict. Recording never
raises into the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span

from sidecar.messages.records import PROTOCOL_GRPC, CaptureRecord
from sidecar.proxy.grpc.metadata import RequestMetadata
from sidecar.proxy.grpc.methods import GrpcMethod
from sidecar.proxy.grpc.peek import NO_MODEL, ModelRef
from sidecar.proxy.grpc.status import DEADLINE_EXCEEDED, OK, StatusCode
from sidecar.proxy.ids import choose_prediction_id
from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing

log = logging.getLogger(__name__)

HEALTH_NAME = "grpc"
SERVER_ERROR_CODES = frozenset({StatusCode.UNKNOWN, DEADLINE_EXCEEDED, StatusCode.UNIMPLEMENTED, StatusCode.INTERNAL,
                                StatusCode.UNAVAILABLE, StatusCode.DATA_LOSS})

Capture = Callable[[CaptureRecord], None]


@dataclass
class Recording:
    """What recording a call needs, shared by all calls of one proxy whichever engine forwards them."""

    target: str  # upstream address, for error details
    default_timeout: float  # upstream deadline when the client set none
    capture: Capture | None
    metrics: RequestMetrics
    tracing: Tracing
    health: UpstreamHealth | None
    recording_failures: int = field(default=0, init=False)

    def recording_failed(self) -> None:
        """Log a broken metrics or capture sink without flooding: the 1st, 2nd, 4th, 8th... failure."""
        self.recording_failures += 1
        if self.recording_failures & (self.recording_failures - 1) == 0:
            log.exception("recording a gRPC call failed (%d times so far)", self.recording_failures)


class Exchange:
    """One forwarded call: what arrived, what went upstream, and its recorded outcome."""

    __slots__ = ("client_span", "forwarding", "metadata", "method", "model", "own_deadline", "prediction_id",
                 "recorded", "reply_id", "request", "server_span", "started", "timeout", "upstream_seconds",
                 "wall_time")

    @classmethod
    def begin(cls, forwarding: Recording, method: GrpcMethod, metadata: RequestMetadata, remaining: float | None,
              request: bytes, model: ModelRef | None = None) -> Exchange:
        """An exchange from its parts.

        `metadata` is already split (its `outgoing` may stay empty: the trace headers to send upstream are
        appended to it when tracing is on); `model` skips the peek at `request` when the caller knows better.
        """
        exchange = cls.__new__(cls)
        exchange._begin(forwarding, method, metadata, remaining, request, model)
        return exchange

    def _begin(self, forwarding: Recording, method: GrpcMethod, metadata: RequestMetadata, remaining: float | None,
               request: bytes, model: ModelRef | None) -> None:
        self.started = time.perf_counter()
        self.wall_time = time.time()
        self.forwarding = forwarding
        self.method = method
        self.request = request
        self.metadata = metadata
        self.prediction_id = choose_prediction_id(metadata.prediction_id, metadata.request_id)
        # answers carry the id only where feedback can join it: inference calls, the ones captured
        self.reply_id: str | None = self.prediction_id if method.captured else None
        if model is None:
            model = method.peek(request) if method.peek is not None and request else NO_MODEL
        self.model: ModelRef = model
        self.own_deadline = remaining is None
        self.timeout: float = forwarding.default_timeout if remaining is None else remaining
        self.upstream_seconds: float | None = None
        self.recorded = False
        self.server_span: Span | None = None
        self.client_span: Span | None = None
        if forwarding.tracing.enabled:
            self._start_spans()

    def _start_spans(self) -> None:
        method, model = self.method, self.model
        attributes: dict[str, Any] = {
            "rpc.system": "grpc", "rpc.service": method.service, "rpc.method": method.name,
            "sidecar.protocol": PROTOCOL_GRPC, "sidecar.method": method.label,
            "sidecar.prediction_id": self.prediction_id, "sidecar.model": model.name,
            "sidecar.model_version": model.version or model.label,
        }
        try:
            tracing = self.forwarding.tracing
            self.server_span = tracing.server_span(method.span_name, self.metadata.trace_carrier, attributes)
            self.client_span, headers = tracing.client_span(self.server_span, method.span_name, attributes)
            self.metadata.outgoing.extend(headers.items())
        except Exception:  # telemetry never breaks a request
            log.debug("starting spans failed", exc_info=True)

    def record(self, code: StatusCode, response: bytes = b"", *, request_bytes: int | None = None,
               response_bytes: int | None = None, upstream_down: bool = False, upstream_answered: bool = True) -> None:
        """Record the outcome once: metrics, capture, spans, health. Never raises.

        Byte counts default to the lengths of the request and response messages (streams pass their totals).
        `upstream_answered` False (the call ended before the model server answered) leaves health untouched.
        """
        if self.recorded:
            return
        self.recorded = True
        forwarding = self.forwarding
        method = self.method
        try:
            model = self.model
            forwarding.metrics.record(model.name, model.version or model.label, PROTOCOL_GRPC, method.label,
                                      code.name, time.perf_counter() - self.started, self.upstream_seconds,
                                      len(self.request) if request_bytes is None else request_bytes,
                                      len(response) if response_bytes is None else response_bytes)
            if upstream_down:
                forwarding.metrics.upstream_error(PROTOCOL_GRPC, "unavailable")
            elif code is DEADLINE_EXCEEDED:
                forwarding.metrics.upstream_error(PROTOCOL_GRPC, "deadline")
            if forwarding.health is not None and (upstream_down or upstream_answered):
                forwarding.health.mark(HEALTH_NAME, not upstream_down)
        except Exception:  # a broken telemetry sink must not fail the call
            forwarding.recording_failed()
        if method.captured and forwarding.capture is not None:
            model = self.model
            try:
                forwarding.capture(CaptureRecord(
                    self.prediction_id, self.wall_time, model.name, model.version, model.label, PROTOCOL_GRPC,
                    method.api, method.label, self.request, response if code is OK else b"", code.value[0],
                    self.upstream_seconds or 0.0, log_opt_out=self.metadata.log_opt_out))
            except Exception:
                forwarding.recording_failed()
        if self.server_span is not None:
            self._end_spans(code)

    def _end_spans(self, code: StatusCode) -> None:
        attributes = {"rpc.grpc.status_code": code.value[0]}
        if self.client_span is not None:
            Tracing.finish(self.client_span, attributes, None if code is OK else code.name)
        assert self.server_span is not None
        Tracing.finish(self.server_span, attributes, code.name if code in SERVER_ERROR_CODES else None)
