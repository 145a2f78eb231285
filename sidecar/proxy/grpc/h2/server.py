"""The client-facing side of the HTTP/2 relay: one `H2ClientConnection` per accepted gRPC client connection.

It holds the connection to the limits of `limits.H2Limits`: the connection limit, the concurrent stream limit it
advertises (streams beyond it are refused), the reset budget, the preface and idle timeouts, and the write buffer
(reading from the client pauses while more than `write_buffer_bytes` wait to be taken by it).
"""

from __future__ import annotations

import asyncio

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.call import Relay, RelayCall, accept
from sidecar.proxy.grpc.h2.endpoint import H2Endpoint, H2ProtocolError, Sender, WriteBatch
from sidecar.proxy.grpc.h2.hpack import HeaderBlock
from sidecar.proxy.grpc.h2.limits import (
    CONCURRENT_STREAMS,
    CONNECTIONS,
    IDLE_TIMEOUT,
    PREFACE_TIMEOUT,
    WRITE_BUFFER,
    WRITE_TIMEOUT,
)


class H2ClientConnection(H2Endpoint):
    """Server role: turns each new request stream into a `RelayCall`."""

    client_side = False

    def __init__(self, relay: Relay, connections: set[H2ClientConnection], batch: WriteBatch) -> None:
        super().__init__(batch, relay.limits, relay.events)
        self.relay = relay
        self.calls: dict[int, RelayCall] = {}
        self.last_stream = 0
        self.draining = False
        self.request_bytes = 0  # request bytes the calls of this connection hold (see RelayCall.hold)
        self.writing_paused = False  # more than the write buffer limit waits for the client; it is not read from
        self._connections = connections
        self._settled = False  # the client preface and SETTINGS arrived
        self._idle_since = 0.0  # when the last call ended (or the connection began), or writes were paused
        self._timer: asyncio.TimerHandle | None = None  # preface timeout, then idle timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        limit = self.limits.write_buffer_bytes
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
        if len(self._connections) >= self.limits.max_connections:
            self.guard.count(CONNECTIONS)
            self.abort(frames.NO_ERROR, "too many connections")
            return
        self._connections.add(self)
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self.limits.preface_timeout, self._preface_expired)

    def last_peer_stream(self) -> int:
        return self.last_stream

    # --- limits ---------------------------------------------------------------------------------------------

    def _preface_expired(self) -> None:
        self._timer = None
        if not self._settled and not self.closed:
            self.guard.count(PREFACE_TIMEOUT)
            self.abort(frames.PROTOCOL_ERROR, f"no HTTP/2 client preface within {self.limits.preface_timeout:g} s")

    def on_settings(self) -> None:
        if not self._settled:
            self._settled = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._arm_idle(self.limits.idle_timeout)

    def _arm_idle(self, delay: float) -> None:
        if self.limits.idle_timeout > 0 and not self.closed:
            self._timer = self._loop.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        """Close the connection when it had no running call, or took none of our writes, for the idle timeout."""
        self._timer = None
        if self.closed:
            return
        timeout = self.limits.idle_timeout
        if self.calls and not self.writing_paused:
            self._arm_idle(timeout)
            return
        waited = self._loop.time() - self._idle_since
        if waited < timeout:
            self._arm_idle(timeout - waited)
            return
        if self.writing_paused:
            self.guard.count(WRITE_TIMEOUT)
            self.abort(frames.NO_ERROR, f"the client took none of our writes for {timeout:g} s")
        else:
            self.guard.count(IDLE_TIMEOUT)
            self.abort(frames.NO_ERROR, f"idle for {timeout:g} s")

    def call_ended(self, call: RelayCall) -> None:
        """`call` is over: it no longer counts against the stream limit; the idle clock starts with the last."""
        if self.calls.get(call.client_stream) is call:
            del self.calls[call.client_stream]
            if not self.calls:
                self._idle_since = self._loop.time()
        self.drop_sender(call.client_stream)

    def pause_writing(self) -> None:
        """More than the write buffer limit waits for the client: stop reading it (no more acknowledgements to
        queue, no more requests) and stop reopening upstream windows for its calls until it takes what it has."""
        if self.writing_paused or self.closed or self.transport is None:
            return
        self.writing_paused = True
        self._idle_since = self._loop.time()
        self.guard.count(WRITE_BUFFER)
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.writing_paused:
            return
        self.writing_paused = False
        if self.closed or self.transport is None:
            return
        self.transport.resume_reading()
        for call in list(self.calls.values()):
            call.client_drained()

    def queued_bytes(self) -> int:
        """Bytes waiting to go to the client: in the socket's buffer, gathered for the next write, and queued on
        streams for window."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None and not self.closed else 0
        return buffered + sum(len(chunk) for chunk in self._out) + sum(
            sender.queued for sender in self.senders.values())

    def stream_refused(self) -> None:
        """A stream was reset, refused or rejected: spend the reset budget; raises H2ProtocolError when spent."""
        if self.guard.stream_reset(self._loop.time()):
            raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many streams reset or refused")

    # --- frames ---------------------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, block: HeaderBlock, end_stream: bool) -> None:
        call = self.calls.get(stream_id)
        if call is not None:  # trailers from the client: gRPC clients send none, but they end the request
            call.client_data(b"", end_stream, 0)
            return
        if stream_id <= self.last_stream:
            if self.guard.control_frame(self._loop.time()):
                raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many control frames")
            self.write(frames.rst_stream(stream_id, frames.STREAM_CLOSED))
            return
        if not stream_id & 1:
            raise H2ProtocolError(frames.PROTOCOL_ERROR, f"client opened even stream {stream_id}")
        self.last_stream = stream_id
        self.guard.stream_opened(self._loop.time())
        if self.draining:
            self.write(frames.rst_stream(stream_id, frames.REFUSED_STREAM))
            return
        if len(self.calls) >= self.limits.max_concurrent_streams:
            self.guard.count(CONCURRENT_STREAMS)
            self.write(frames.rst_stream(stream_id, frames.REFUSED_STREAM))
            self.stream_refused()
            return
        if accept(self.relay, self, stream_id, block, end_stream) is None:  # not a gRPC request: answered at once
            self.stream_refused()

    def on_data(self, stream_id: int, data: memoryview, end_stream: bool, flow_length: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.client_data(data, end_stream, flow_length)

    def on_reset(self, stream_id: int, code: int) -> None:
        call = self.calls.get(stream_id)
        if call is None:  # a stream that is not running: costs what a control frame costs
            if self.guard.control_frame(self._loop.time()):
                raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many control frames")
            return
        call.client_reset()
        self.stream_refused()

    def on_drained(self, sender: Sender) -> None:
        call = self.calls.get(sender.stream_id)
        if call is not None:
            call.client_drained()

    def on_connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.writing_paused = False
        self.cancel_calls()

    def cancel_calls(self) -> None:
        for call in list(self.calls.values()):
            call.client_reset()

    def shutdown(self) -> None:
        """Stop taking new calls (GOAWAY); calls already running go on."""
        if not self.draining and not self.closed:
            self.draining = True
            self.write(frames.goaway(self.last_stream, frames.NO_ERROR))
