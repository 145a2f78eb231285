"""The client-facing side of the HTTP/2 relay: one `H2ClientConnection` per accepted gRPC client connection."""

from __future__ import annotations

import asyncio

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.call import Relay, RelayCall, accept
from sidecar.proxy.grpc.h2.endpoint import H2Endpoint, H2ProtocolError, Sender, WriteBatch
from sidecar.proxy.grpc.h2.hpack import HeaderBlock


class H2ClientConnection(H2Endpoint):
    """Server role: turns each new request stream into a `RelayCall`."""

    client_side = False

    def __init__(self, relay: Relay, connections: set[H2ClientConnection], batch: WriteBatch) -> None:
        super().__init__(batch)
        self.relay = relay
        self.calls: dict[int, RelayCall] = {}
        self.last_stream = 0
        self.draining = False
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connections.add(self)

    def last_peer_stream(self) -> int:
        return self.last_stream

    def on_headers(self, stream_id: int, block: HeaderBlock, end_stream: bool) -> None:
        call = self.calls.get(stream_id)
        if call is not None:  # trailers from the client: gRPC clients send none, but they end the request
            call.client_data(b"", end_stream, 0)
            return
        if stream_id <= self.last_stream:
            self.write(frames.rst_stream(stream_id, frames.STREAM_CLOSED))
            return
        if not stream_id & 1:
            raise H2ProtocolError(frames.PROTOCOL_ERROR, f"client opened even stream {stream_id}")
        self.last_stream = stream_id
        if self.draining:
            self.write(frames.rst_stream(stream_id, frames.REFUSED_STREAM))
            return
        accept(self.relay, self, stream_id, block, end_stream)

    def on_data(self, stream_id: int, data: memoryview, end_stream: bool, flow_length: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.client_data(data, end_stream, flow_length)

    def on_reset(self, stream_id: int, code: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.client_reset()

    def on_drained(self, sender: Sender) -> None:
        call = self.calls.get(sender.stream_id)
        if call is not None:
            call.client_drained()

    def on_connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self.cancel_calls()

    def cancel_calls(self) -> None:
        for call in list(self.calls.values()):
            call.client_reset()

    def shutdown(self) -> None:
        """Stop taking new calls (GOAWAY); calls already running go on."""
        if not self.draining and not self.closed:
            self.draining = True
            self.write(frames.goaway(self.last_stream, frames.NO_ERROR))
