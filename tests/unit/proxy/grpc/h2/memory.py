"""Driving the relay's client connections without sockets: bytes in through `data_received`, frames out of an
in-memory transport that a test reads from (or does not, like a peer that stops reading).

    client = MemoryClient.open(engine)        # engine: a started H2GrpcProxy
    client.send(frames.PING ...)              # bytes in, handled at once
    for kind, flags, stream_id, payload in client.frames(): ...
"""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.hpack import Header, HeaderDecoder, HeaderEncoder
from sidecar.proxy.grpc.h2.relay import H2GrpcProxy
from sidecar.proxy.grpc.h2.server import H2ClientConnection

Frame = tuple[int, int, int, bytes]  # kind, flags, stream id, payload


class MemoryTransport(asyncio.Transport):
    """A transport whose peer reads what is written when the test calls `take()`, or at once when `reading`.

    Above the write buffer limit it pauses the protocol's writing, as asyncio's transports do, and it records
    whether the protocol paused its reading.
    """

    def __init__(self, protocol: asyncio.Protocol, reading: bool = True) -> None:
        super().__init__()
        self.protocol = protocol
        self.reading = reading  # the peer takes everything at once
        self.buffer = bytearray()  # written, not yet taken by the peer
        self.high, self.low = 64 * 1024, 16 * 1024
        self.writing_paused = False
        self.reading_paused = False
        self.closing = False
        self.lost = False
        self.peak = 0  # the most bytes ever waiting in `buffer` for a peer that does not read

    def write(self, data: Any) -> None:
        if self.closing:
            return
        self.buffer += data
        if not self.reading:
            self.peak = max(self.peak, len(self.buffer))
            if len(self.buffer) > self.high and not self.writing_paused:
                self.writing_paused = True
                self.protocol.pause_writing()

    def take(self) -> bytes:
        """What the peer reads now (everything written so far)."""
        data = bytes(self.buffer)
        self.buffer.clear()
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()
        if self.closing:
            self._lose()
        return data

    def get_write_buffer_size(self) -> int:
        return 0 if self.reading else len(self.buffer)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = 64 * 1024 if high is None else high
        self.low = self.high // 4 if low is None else low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low, self.high

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_reading(self) -> bool:
        return not self.reading_paused

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.reading or not self.buffer:
            self._lose()

    def abort(self) -> None:
        self.closing = True
        self.buffer.clear()
        self._lose()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def parse_frames(data: bytes) -> list[Frame]:
    out = []
    pos = 0
    while len(data) - pos >= 9:
        high, low, kind, flags, stream_id = frames.FRAME_HEADER.unpack_from(data, pos)
        length = (high << 16) | low
        out.append((kind, flags, stream_id & 0x7FFF_FFFF, data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out


class MemoryClient:
    """A scripted HTTP/2 client on a socketless connection of a running relay."""

    def __init__(self, connection: H2ClientConnection, transport: MemoryTransport) -> None:
        self.connection = connection
        self.transport = transport
        self.encoder, self.decoder = HeaderEncoder(), HeaderDecoder()
        self.received: list[Frame] = []
        self.blocks: dict[int, list[dict[bytes, bytes]]] = {}  # decoded header blocks by stream, in order

    @classmethod
    def open(cls, engine: H2GrpcProxy, *, reading: bool = True, preface: bool = True) -> MemoryClient:
        connection = engine.connection()
        transport = MemoryTransport(connection, reading)
        connection.connection_made(transport)
        connection.flush()  # the relay's opening SETTINGS, without waiting for the event loop to turn
        client = cls(connection, transport)
        if preface:  # with windows large enough never to need an update
            client.send(frames.PREFACE, frames.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: frames.MAX_WINDOW}),
                        frames.window_update(0, frames.MAX_WINDOW - frames.DEFAULT_WINDOW))
        return client

    def send(self, *data: bytes) -> None:
        self.connection.data_received(b"".join(data))

    def headers(self, stream_id: int, fields: tuple[Header, ...], end_stream: bool = False) -> bytes:
        return frames.headers(stream_id, self.encoder.encode(fields), end_stream, frames.DEFAULT_MAX_FRAME)

    def frames(self) -> list[Frame]:
        """The frames written since the last call (the peer reads them now)."""
        new = parse_frames(self.transport.take())
        self.received.extend(new)
        for kind, _, stream_id, payload in new:
            if kind == frames.HEADERS:  # decoded as they come: HPACK state depends on the order
                self.blocks.setdefault(stream_id, []).append(dict(self.decoder.decode(payload).fields))
        return new

    def goaway(self) -> tuple[int, bytes] | None:
        """(error code, debug data) of the GOAWAY received so far, if any."""
        self.frames()
        for kind, _, _, payload in self.received:
            if kind == frames.GOAWAY:
                return frames.unpack_u32(payload, 4), payload[8:]
        return None

    def stream(self, stream_id: int) -> list[Frame]:
        self.frames()
        return [frame for frame in self.received if frame[2] == stream_id]

    def trailers(self, stream_id: int) -> dict[bytes, bytes]:
        """The last header block received on `stream_id` ({} when none)."""
        self.frames()
        blocks = self.blocks.get(stream_id)
        return blocks[-1] if blocks else {}

    def resets(self) -> dict[int, int]:
        """RST_STREAM codes received, by stream."""
        self.frames()
        return {sid: frames.unpack_u32(payload) for kind, _, sid, payload in self.received
                if kind == frames.RST_STREAM}

    def lose(self) -> None:
        if not self.transport.lost:
            self.transport.lost = True
            self.connection.connection_lost(None)
