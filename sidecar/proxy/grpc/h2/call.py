"""One gRPC call through the HTTP/2 relay: a client stream paired with an upstream stream.

Headers are rewritten by the rules of `headers`; DATA passes unchanged both ways, its length prefixes followed
by a `MessageMeter` (byte counts, size limit). Known unary methods are received whole before anything goes
upstream (the request is peeked for its model, checked against the size limit and kept for capture and for a
retry); every other method is relayed as it arrives. A client deadline (`grpc-timeout`) runs from the request's
headers: the relay ends the call with DEADLINE_EXCEEDED when it passes, whether or not the request is complete (the
client and the model server enforce it too, and a client's cancel close to its deadline counts as
DEADLINE_EXCEEDED). A unary call without a client deadline must complete its request within the configured upstream
timeout, and then gets that timeout again as `grpc-timeout` and a timer for the answer. Request bytes a call holds
before its request is complete (or before the model server takes them) count against the per-connection and total
buffer limits (`limits.RequestBuffers`); a call that would pass them ends with RESOURCE_EXHAUSTED. The outcome is
recorded once through `Exchange` (metrics, capture, spans, health), exactly as by the grpc.aio engine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sidecar import __version__
from sidecar.proxy.deadlines import Deadlines
from sidecar.proxy.grpc.exchange import Exchange, Recording
from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.endpoint import STREAM_UPDATE_AT, Chunk, Sender, WriteBatch
from sidecar.proxy.grpc.h2.headers import (
    RESPONSE_HEAD,
    STATUS_200,
    RelayFields,
    RequestHead,
    answer,
    prediction_id_field,
    request_head,
    status_fields,
    with_message,
)
from sidecar.proxy.grpc.h2.hpack import HeaderBlock, encode_headers
from sidecar.proxy.grpc.h2.limits import REQUEST_TIMEOUT, H2Limits, RequestBuffers
from sidecar.proxy.grpc.h2.wire import (
    MessageMeter,
    format_timeout,
    peek_model,
    single_message,
    status_of_reset,
    too_large_details,
)
from sidecar.proxy.grpc.metadata import RequestMetadata
from sidecar.proxy.grpc.methods import KNOWN_METHODS, GrpcMethod, describe
from sidecar.proxy.grpc.peek import NO_MODEL
from sidecar.proxy.grpc.status import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    StatusCode,
)
from sidecar.proxy.ids import choose_prediction_id

if TYPE_CHECKING:
    from sidecar.proxy.grpc.h2.server import H2ClientConnection
    from sidecar.proxy.grpc.h2.upstream import H2UpstreamConnection, H2UpstreamPool


USER_AGENT = f"tfs-sidecar/{__version__} (h2 relay)".encode()
HIGH_WATER = 1024 * 1024  # a paused receive window reopens once the other side has less than this queued
PARK_SECONDS = 0.05
MAX_CACHED_UNKNOWN_METHODS = 256
# A client whose deadline passes cancels its call (RST_STREAM CANCEL), and gRPC rounds grpc-timeout up, so a
# cancel this close to the deadline is counted as the deadline passing.
DEADLINE_SLACK_SECONDS = 0.02
DEADLINE_SLACK_FRACTION = 0.02


@dataclass
class Relay:
    """What every call of one relay shares."""

    recording: Recording
    target: str  # upstream host:port, for error details
    max_message_bytes: int
    deadlines: Deadlines
    pool: H2UpstreamPool
    batch: WriteBatch
    loop: asyncio.AbstractEventLoop
    limits: H2Limits
    events: dict[str, int]  # limit events by limit name
    buffers: RequestBuffers

    def __post_init__(self) -> None:
        self.default_timeout = self.recording.default_timeout
        self.fields = RelayFields(self.target.encode(), USER_AGENT, format_timeout(self.default_timeout))
        self.capturing = self.recording.capture is not None
        self.tracing = self.recording.tracing.enabled
        self.unknown_methods: dict[str, GrpcMethod] = {}

    def describe(self, path: str) -> GrpcMethod:
        method = KNOWN_METHODS.get(path) or self.unknown_methods.get(path)
        if method is None:
            method = describe(path)
            if len(self.unknown_methods) < MAX_CACHED_UNKNOWN_METHODS:
                self.unknown_methods[path] = method
        return method

    def unavailable(self, reason: str) -> str:
        return f"sidecar: upstream model server {self.target} is unavailable: {reason}"


def accept(relay: Relay, client: H2ClientConnection, stream_id: int, block: HeaderBlock,
           end_stream: bool) -> RelayCall | None:
    """A new request stream: read its headers and start the call, or answer at once (None) when it is not gRPC."""
    head = request_head(block, relay.fields, relay.tracing, relay.describe)
    method = head.method
    if method is None:
        assert head.rejection is not None
        http_status, details = head.rejection
        client.write_headers(stream_id, ((b":status", http_status), (b"content-type", b"application/grpc"),
                                         *status_fields(INTERNAL, details)), True)
        client.write(frames.rst_stream(stream_id, frames.NO_ERROR))
        return None
    call = RelayCall(relay, client, stream_id, method, head,
                     RequestMetadata([], head.prediction_id, head.request_id, head.carrier, head.log_opt_out))
    if not method.unary:
        call.start()
    if end_stream:
        call.client_data(b"", True, 0)
    return call


class RelayCall:
    """Both halves of one forwarded call and its outcome."""

    __slots__ = ("body", "client", "client_owed", "client_sender", "client_stream", "deadline", "done", "exchange",
                 "head", "held", "http_status", "metadata", "method", "own_timeout", "parked", "parked_handle", "relay",
                 "request", "request_end", "request_meter", "responded", "response_meter", "response_parts",
                 "retried", "sent_at", "started", "timeout", "timer", "trace", "upstream", "upstream_finished",
                 "upstream_owed", "upstream_sender", "upstream_stream", "waiting")

    def __init__(self, relay: Relay, client: H2ClientConnection, stream_id: int, method: GrpcMethod,
                 head: RequestHead, metadata: RequestMetadata) -> None:
        self.relay = relay
        self.client = client
        self.client_stream = stream_id
        self.client_sender = client.open_sender(stream_id)
        client.calls[stream_id] = self
        self.method = method
        self.head = head
        self.timeout = timeout = head.timeout
        self.deadline = None if timeout is None else relay.loop.time() + timeout
        self.own_timeout = False  # the sidecar's grpc-timeout goes upstream (a unary call without a deadline)
        self.trace = b""  # the client span's trace context, encoded, when tracing
        self.metadata = metadata
        self.body: list[Chunk] = []
        self.request = b""
        self.request_end = False
        self.request_meter = MessageMeter(relay.max_message_bytes)
        self.response_meter = MessageMeter(relay.max_message_bytes)
        self.response_parts: list[Chunk] | None = [] if method.captured and relay.capturing else None
        self.exchange: Exchange | None = None
        self.upstream: H2UpstreamConnection | None = None
        self.upstream_stream = 0
        self.upstream_sender: Sender | None = None
        self.upstream_finished = False
        self.responded = False
        self.http_status = STATUS_200
        self.done = False
        self.waiting = False
        self.retried = False
        self.started = 0.0  # when the call started (its request complete, for unary calls); 0: not yet
        self.sent_at = 0.0
        self.timer: int | None = None
        self.client_owed = 0
        self.upstream_owed = 0
        self.parked: str | None = None  # why the upstream is unreachable, answered once the client wrote
        self.parked_handle: asyncio.TimerHandle | None = None
        self.held = 0  # request bytes held against the buffer limits
        if timeout is not None:  # the client's deadline runs from its headers
            self.timer = relay.deadlines.arm(self, timeout)
        elif method.unary:  # the request must be complete within the upstream timeout
            self.timer = relay.deadlines.arm(self, relay.default_timeout)

    # --- the request ----------------------------------------------------------------------------------------

    def client_data(self, data: Chunk, end_stream: bool, flow_length: int) -> None:
        if self.done:
            return
        if self.request_end:  # a frame after END_STREAM: the stream is half-closed (RFC 9113 section 5.1)
            self.client.write(frames.rst_stream(self.client_stream, frames.STREAM_CLOSED))
            self.client_reset()
            self.client.stream_refused()  # may end the connection (raises H2ProtocolError)
            return
        if data and self.request_meter.feed(data) >= 0:
            meter = self.request_meter
            self._fail(RESOURCE_EXHAUSTED, too_large_details(meter.oversized, meter.limit), upstream_answered=False)
            return
        self.client_owed += flow_length
        if end_stream:
            self.request_end = True
        if self.method.unary:
            if self.request_meter.count > 1:
                self._fail(INTERNAL, "sidecar: a unary call carried more than one request message",
                           upstream_answered=False)
                return
            if data:
                if not self.hold(self.held + len(data)):
                    return
                self.body.append(data)
            if end_stream:
                self.start()
            elif self.client_owed >= STREAM_UPDATE_AT:  # the whole message is held; the size limit bounds it
                self.client.grant(self.client_stream, self.client_owed)
                self.client_owed = 0
            return
        upstream, sender = self.upstream, self.upstream_sender
        if upstream is not None and sender is not None:
            upstream.send_data(sender, data, end_stream)
            if sender.queued != self.held and not self.hold(sender.queued):
                return
        elif data:
            if not self.hold(self.held + len(data)):
                return
            self.body.append(data)
        if self.parked is not None:
            self._unpark()
            return
        self.upstream_drained()

    def upstream_drained(self) -> None:
        """Reopen the client's stream window once what it sent has mostly gone upstream."""
        sender = self.upstream_sender
        if self.held and sender is not None and sender.queued < self.held:
            self.release(sender.queued)
        if self.client_owed < STREAM_UPDATE_AT or self.request_end or self.done:
            return
        if sender is not None and sender.queued < HIGH_WATER:
            self.client.grant(self.client_stream, self.client_owed)
            self.client_owed = 0

    def hold(self, amount: int) -> bool:
        """Hold `amount` request bytes against the buffer limits; False (and the call refused) when that would pass
        one of them."""
        more = amount - self.held
        if more > 0:
            refusal = self.relay.buffers.refusal(self.client.request_bytes, more)
            if refusal is not None:
                self._refuse(RESOURCE_EXHAUSTED, refusal)
                self.client.stream_refused()  # may end the connection (raises H2ProtocolError)
                return False
        self.release(amount)
        return True

    def release(self, amount: int = 0) -> None:
        """Hold `amount` bytes (less than before, or none)."""
        delta = amount - self.held
        if delta:
            self.held = amount
            self.client.request_bytes += delta
            buffers = self.relay.buffers
            buffers.total += delta
            if buffers.total > buffers.peak:
                buffers.peak = buffers.total

    def start(self) -> None:
        """Open the upstream stream; the exchange (prediction id, model, spans) begins first only when tracing
        needs it for the upstream headers, else right after the request went out."""
        relay = self.relay
        method = self.method
        self.started = time.perf_counter()
        if method.unary:
            body = self.body
            self.request = bytes(body[0]) if len(body) == 1 else b"".join(body)
            self.body = []
            self.release()  # complete: bounded by the message size limit and the stream limit from here on
        if self.deadline is None and method.unary:
            self.own_timeout = True
            if self.timer is not None:
                relay.deadlines.disarm(self, self.timer)
            self.timer = relay.deadlines.arm(self, relay.default_timeout)
        if relay.tracing:
            outgoing = self.begin_exchange().metadata.outgoing  # the client span's trace context
            self.trace = encode_headers([(key.encode(), value.encode() if isinstance(value, str) else value)
                                         for key, value in outgoing])
        else:
            relay.batch.defer(self.begin_exchange)
        relay.pool.open(self)

    def begin_exchange(self) -> Exchange:
        """The call's exchange, begun on first use: peeks the model, picks the prediction id, starts spans."""
        exchange = self.exchange
        if exchange is not None:
            return exchange
        relay, method = self.relay, self.method
        deadline = self.deadline
        remaining = None if deadline is None else max(deadline - relay.loop.time(), 0.0)
        if not method.unary:
            exchange = Exchange.begin(relay.recording, method, self.metadata, remaining, b"")
        else:
            request = self.request
            message = single_message(request)
            if message is not None:  # a plain message: peeked and captured as is
                model = method.peek(message) if method.peek is not None else NO_MODEL
                exchange = Exchange.begin(relay.recording, method, self.metadata, remaining, message, model)
            else:  # compressed or unusual: the codec unframes what the capture keeps
                exchange = Exchange.begin(relay.recording, method, self.metadata, remaining, request,
                                          peek_model(method, request, self.head.encoding))
        exchange.started = self.started
        self.exchange = exchange
        return exchange

    def opened(self, upstream: H2UpstreamConnection, stream_id: int, sender: Sender) -> None:
        """The upstream stream exists: send the request headers and whatever of the body is here."""
        self.upstream = upstream
        self.upstream_stream = stream_id
        self.upstream_sender = sender
        self.waiting = False
        self.sent_at = time.perf_counter()
        head = self.head
        if self.own_timeout:
            fields, key = head.upstream_timed, head.timed_key
        else:
            fields, key = head.upstream, head
        if self.method.unary:
            if self.request:
                upstream.send_headers(sender, fields, False, key, self.trace)
                upstream.send_data(sender, self.request, True)
            else:
                upstream.send_headers(sender, fields, True, key, self.trace)
            return
        upstream.send_headers(sender, fields, False, key, self.trace)
        body, self.body = self.body, []
        for chunk in body:
            upstream.send_data(sender, chunk, False)
        if self.request_end:
            upstream.send_data(sender, b"", True)
        if self.held:
            self.release(min(sender.queued, self.held))

    # --- the response ---------------------------------------------------------------------------------------

    def upstream_headers(self, block: HeaderBlock, end_stream: bool) -> None:
        if self.done:
            return
        exchange = self.begin_exchange()
        reply = answer(block)
        client, sender = self.client, self.client_sender
        own_deadline = exchange.own_deadline and self.method.unary
        if self.responded:  # trailers
            self.upstream_finished = True
            code = reply.code(self.http_status)
            if code is DEADLINE_EXCEEDED and own_deadline:
                client.send_headers(sender, with_message(block.fields, self._own_deadline_details()), True)
            else:
                client.send_headers(sender, block.fields, True, reply.trailers_key)
            self._finish(code)
            return
        self.responded = True
        self.http_status = status = reply.status
        pid = prediction_id_field(exchange.reply_id)
        if not end_stream:
            client.send_headers(sender, reply.head(), False, reply, pid)
            return
        self.upstream_finished = True
        if status != STATUS_200:  # an HTTP error without gRPC headers: passed on as it is, with the id
            client.send_headers(sender, reply.head(), True, reply, pid)
            self._finish(reply.code(status))
            return
        head, trailers, code = reply.split()
        client.send_headers(sender, head, False, reply.split_head_key, pid)
        if code is DEADLINE_EXCEEDED and own_deadline:
            client.send_headers(sender, with_message(block.fields, self._own_deadline_details(), split=True), True)
        else:
            client.send_headers(sender, trailers, True, reply.split_trailers_key)
        self._finish(code)

    def upstream_data(self, data: memoryview, end_stream: bool, flow_length: int) -> None:
        if self.done:
            return
        if not self.responded:
            self.upstream_finished = end_stream
            self._fail(INTERNAL, "sidecar: the upstream model server sent data before headers")
            return
        if data and self.response_meter.feed(data) >= 0:
            meter = self.response_meter
            self._fail(RESOURCE_EXHAUSTED, too_large_details(meter.oversized, meter.limit))
            return
        self.client.send_data(self.client_sender, data, False)
        if self.response_parts is not None and data:
            if self.response_meter.count > 1:  # not a unary answer: nothing to capture
                self.response_parts = None
            else:
                self.response_parts.append(data)
        if end_stream:
            self.upstream_finished = True
            self._fail(INTERNAL, "sidecar: the upstream model server ended the call without a status")
            return
        self.upstream_owed += flow_length
        if self.upstream_owed >= STREAM_UPDATE_AT:
            self.client_drained()

    def client_drained(self) -> None:
        """Reopen the upstream's stream window once the client has taken most of what it sent (and takes more)."""
        if self.upstream_owed < STREAM_UPDATE_AT or self.done or self.upstream is None:
            return
        if self.client_sender.queued < HIGH_WATER and not self.client.writing_paused:
            self.upstream.grant(self.upstream_stream, self.upstream_owed)
            self.upstream_owed = 0

    # --- endings --------------------------------------------------------------------------------------------

    def _finish(self, code: StatusCode) -> None:
        """The upstream's status is on its way to the client: let both streams go, record the call after."""
        self.begin_exchange().upstream_seconds = time.perf_counter() - self.sent_at
        self._close()
        self.relay.batch.defer(lambda: self._record(code))

    def _record(self, code: StatusCode) -> None:
        exchange = self.begin_exchange()
        response = b""
        parts = self.response_parts
        if code is OK and parts:
            body = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
            message = single_message(body)
            response = body if message is None else message
        exchange.record(code, response, request_bytes=self.request_meter.total,
                        response_bytes=self.response_meter.total)

    def _fail(self, code: StatusCode, details: str, *, upstream_down: bool = False,
              upstream_answered: bool = True) -> None:
        """Answer the client with the sidecar's own status, record it, and let both streams go."""
        client, sender = self.client, self.client_sender
        exchange = self.begin_exchange() if self.started else None
        if not self.responded:
            self.responded = True
            pid = exchange.reply_id if exchange is not None else choose_prediction_id(
                self.metadata.prediction_id, self.metadata.request_id) if self.method.captured else None
            client.send_headers(sender, RESPONSE_HEAD, False, RESPONSE_HEAD, prediction_id_field(pid))
        client.send_headers(sender, status_fields(code, details), True)
        if exchange is not None:
            if self.sent_at:
                exchange.upstream_seconds = time.perf_counter() - self.sent_at
            exchange.record(code, request_bytes=self.request_meter.total, response_bytes=self.response_meter.total,
                            upstream_down=upstream_down, upstream_answered=upstream_answered)
        self._close()

    def _close(self) -> None:
        self.done = True
        if self.timer is not None:
            self.relay.deadlines.disarm(self, self.timer)
            self.timer = None
        if self.parked_handle is not None:
            self.parked_handle.cancel()
            self.parked_handle = None
        if self.held:
            self.release()
        self.body = []
        self.client.call_ended(self)
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            sender = self.upstream_sender
            if not self.upstream_finished:
                code: int | None = frames.CANCEL
            elif sender is not None and not sender.closed:
                code = frames.NO_ERROR
            else:
                code = None
            upstream.finish_stream(self.upstream_stream, code)

    def _own_deadline_details(self) -> str:
        return (f"sidecar: upstream model server {self.relay.target} did not answer within "
                f"{self.relay.default_timeout:g} s")

    def expired(self) -> None:
        """The call's deadline passed: the client's (from its headers), or the sidecar's (a unary call without a
        client deadline: for its request to complete, then for the upstream's answer)."""
        self.timer = None
        if self.done:
            return
        if self.own_timeout:
            details = self._own_deadline_details()
        elif self.deadline is None:
            details = f"sidecar: the request did not complete within {self.relay.default_timeout:g} s"
        else:
            details = "Deadline Exceeded"
        if not self.request_end:
            events = self.relay.events
            events[REQUEST_TIMEOUT] = events.get(REQUEST_TIMEOUT, 0) + 1
        self._refuse(DEADLINE_EXCEEDED, details)

    def _refuse(self, code: StatusCode, details: str) -> None:
        """End the call with the sidecar's status; a client still sending its request is told to stop
        (RST_STREAM NO_ERROR after the response, RFC 9113 section 8.1)."""
        self._fail(code, details, upstream_answered=False)
        if not self.request_end and self.client_sender.closed:  # only once the status went out
            self.client.write(frames.rst_stream(self.client_stream, frames.NO_ERROR))

    def client_reset(self) -> None:
        """The client cancelled the call (RST_STREAM) or went away: cancel upstream and record why."""
        if self.done:
            return
        self.responded = True  # nothing more goes to the client
        code = CANCELLED
        if self.deadline is not None and self.timeout is not None:
            slack = max(DEADLINE_SLACK_SECONDS, self.timeout * DEADLINE_SLACK_FRACTION)
            if self.relay.loop.time() >= self.deadline - slack:
                code = DEADLINE_EXCEEDED
        if self.started:
            exchange = self.begin_exchange()
            if self.sent_at:
                exchange.upstream_seconds = time.perf_counter() - self.sent_at
            exchange.record(code, request_bytes=self.request_meter.total, response_bytes=self.response_meter.total,
                            upstream_answered=False)
        self._close()

    def upstream_reset(self, code: int) -> None:
        if self.done:
            return
        self.upstream_finished = True
        self.upstream_sender = None
        if code == frames.REFUSED_STREAM and self._retry():
            return
        self._fail(status_of_reset(code), f"Received RST_STREAM with error code {code}")

    def upstream_refused(self) -> None:
        """The upstream connection went away (GOAWAY) before this call's stream was processed."""
        if self.done:
            return
        self.upstream_finished = True
        if self._retry():
            return
        self._fail(UNAVAILABLE, self.relay.unavailable("it closed the connection (GOAWAY)"), upstream_down=True,
                   upstream_answered=False)

    def upstream_lost(self, reason: str) -> None:
        if self.done:
            return
        self.upstream_finished = True
        self.upstream = None
        self._fail(UNAVAILABLE, self.relay.unavailable(reason), upstream_down=True, upstream_answered=False)

    def upstream_unavailable(self, reason: str) -> None:
        """No connection to the upstream could be made for this call."""
        self.waiting = False
        if self.done:
            return
        if not self.method.unary and not self.request_end and not self.request_meter.count:
            # A gRPC client that gets the status before it has written its first message may report INTERNAL
            # instead (grpc.aio does); wait until it wrote something, briefly.
            self.parked = reason
            self.parked_handle = self.relay.loop.call_later(PARK_SECONDS, self._unpark)
            return
        self._fail(UNAVAILABLE, self.relay.unavailable(reason), upstream_down=True, upstream_answered=False)

    def _unpark(self) -> None:
        reason, self.parked = self.parked, None
        if self.parked_handle is not None:
            self.parked_handle.cancel()
            self.parked_handle = None
        if reason is not None and not self.done:
            self._fail(UNAVAILABLE, self.relay.unavailable(reason), upstream_down=True, upstream_answered=False)

    def _retry(self) -> bool:
        """Send a unary call again on a fresh stream when the upstream provably did not process it."""
        if not self.method.unary or self.retried or self.responded:
            return False
        self.retried = True
        old, self.upstream = self.upstream, None
        if old is not None:
            old.finish_stream(self.upstream_stream, None)
        self.upstream_sender = None
        self.upstream_stream = 0
        self.upstream_finished = False
        self.relay.pool.open(self)
        return True
