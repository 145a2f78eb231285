"""One HTTP/2 connection of the relay, either role: frames in, frames out, settings, pings and flow control.

`H2Endpoint` is an asyncio Protocol that parses frames, answers SETTINGS and PING, assembles header blocks
(HEADERS + CONTINUATION) and decodes them, keeps the connection's receive window open, and sends DATA within the
peer's connection and stream windows, queueing the rest per stream until WINDOW_UPDATE frames arrive. Whatever
concerns streams (what a HEADERS or DATA frame means, when a stream's receive window is reopened) is left to the
subclasses through the `on_*` hooks. Output is gathered and written in one socket write once the frames being
handled are done (`WriteBatch`).

Each connection has a `ConnectionGuard` (`limits`): the frames it parses are reported to it, and a spent budget
ends the connection with GOAWAY(ENHANCE_YOUR_CALM). The relay's upstream connection gets budgets that are never
spent; client connections get the configured ones (`server.H2ClientConnection`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.hpack import Header, HeaderBlock, HeaderDecoder, HeaderEncoder, HpackError
from sidecar.proxy.grpc.h2.limits import UPSTREAM_LIMITS, ConnectionGuard, H2Limits

log = logging.getLogger(__name__)

STREAM_WINDOW = 4 * 1024 * 1024  # advertised initial stream window
CONNECTION_WINDOW = 16 * 1024 * 1024  # the connection window is raised to this right away
MAX_FRAME = 1024 * 1024  # advertised SETTINGS_MAX_FRAME_SIZE
CLOSE_LINGER_SECONDS = 2.0  # a closed connection whose peer does not take the last bytes is aborted after this
STREAM_UPDATE_AT = STREAM_WINDOW // 2
CONNECTION_UPDATE_AT = CONNECTION_WINDOW // 4
Chunk = bytes | memoryview
Headers = tuple[Iterable[Header], object, bytes]  # fields, cache key, pre-encoded literal fields


class H2ProtocolError(Exception):
    """The peer broke HTTP/2: the connection ends with GOAWAY and this error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Sender:
    """The sending half of one stream: its window and the DATA (and final HEADERS) waiting for window."""

    __slots__ = ("closed", "end_stream", "queue", "queued", "stream_id", "trailers", "window")

    def __init__(self, stream_id: int, window: int) -> None:
        self.stream_id = stream_id
        self.window = window
        self.queue: deque[Chunk] = deque()
        self.queued = 0
        self.end_stream = False  # END_STREAM goes on the last queued DATA
        self.trailers: Headers | None = None  # final HEADERS to encode and send once the queue is empty
        self.closed = False  # END_STREAM sent (or the stream was reset)


class WriteBatch:
    """Endpoints with output gathered while frames are handled, flushed once the handling is done, and work that
    can wait until then.

    One per relay: a request read from a client writes to the upstream connection and a response to the client,
    each in a single socket write right after the frames that caused them, without waiting for another turn of
    the event loop. Bookkeeping that is not needed to forward (recording a finished call) runs after the writes,
    so it does not delay them.
    """

    __slots__ = ("active", "dirty", "later")

    def __init__(self) -> None:
        self.active = False
        self.dirty: list[H2Endpoint] = []
        self.later: list[Callable[[], object]] = []

    def defer(self, work: Callable[[], object]) -> None:
        """Run `work` once the current writes went out (at once when no frames are being handled)."""
        if self.active:
            self.later.append(work)
        else:
            work()

    def flush(self) -> None:
        """Write what was gathered, then run the deferred work (which may gather more). Never raises."""
        try:
            dirty, later = self.dirty, self.later
            while dirty or later:
                self.dirty, self.later = [], []
                for endpoint in dirty:
                    try:
                        endpoint.flush()
                    except Exception:
                        log.exception("writing to an HTTP/2 connection failed")
                for work in later:
                    try:
                        work()
                    except Exception:  # deferred bookkeeping must not break the connection that ran it
                        log.exception("deferred relay work failed")
                dirty, later = self.dirty, self.later
        finally:
            self.active = False


class H2Endpoint(asyncio.Protocol):
    client_side = False

    def __init__(self, batch: WriteBatch, limits: H2Limits = UPSTREAM_LIMITS,
                 events: dict[str, int] | None = None) -> None:
        self._batch = batch
        self.limits = limits
        self.guard = ConnectionGuard(limits, {} if events is None else events)
        self.transport: asyncio.Transport | None = None
        self.decoder = HeaderDecoder()
        self.encoder = HeaderEncoder()
        self.closed = False
        self.peer_max_frame = frames.DEFAULT_MAX_FRAME
        self.peer_initial_window = frames.DEFAULT_WINDOW
        self.peer_max_streams = frames.MAX_STREAM_ID
        self.send_window = frames.DEFAULT_WINDOW
        self.senders: dict[int, Sender] = {}
        self._blocked: dict[int, Sender] = {}  # senders waiting for connection window, in arrival order
        self._out: list[Chunk] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._received: list[bytes] = []  # bytes of an incomplete frame
        self._received_bytes = 0
        self._needed = 0  # bytes needed before the pending frame is complete (0: unknown yet)
        self._preface = not self.client_side  # a server first reads the client's preface
        self._first_settings = not self.client_side  # ... and then its SETTINGS, which must be the first frame
        self._linger: asyncio.TimerHandle | None = None
        self._owed = 0  # received DATA bytes not yet returned to the peer's connection window
        self._block_stream = 0  # stream of the header block being assembled (0: none)
        self._block = bytearray()
        self._block_end_stream = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        values = {frames.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW, frames.SETTINGS_MAX_FRAME_SIZE: MAX_FRAME}
        if self.client_side:
            values[frames.SETTINGS_ENABLE_PUSH] = 0
        else:
            values[frames.SETTINGS_MAX_CONCURRENT_STREAMS] = self.limits.max_concurrent_streams
        opening = frames.settings(values) + frames.window_update(0, CONNECTION_WINDOW - frames.DEFAULT_WINDOW)
        self.write(frames.PREFACE + opening if self.client_side else opening)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._out.clear()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.on_connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._received:
            self._received.append(data)
            self._received_bytes += len(data)
            if self._received_bytes < self._needed:
                return
            data = b"".join(self._received)
            self._received.clear()
        batch = self._batch
        outermost = not batch.active
        batch.active = True
        try:
            self._parse(data)
        except H2ProtocolError as error:
            self.abort(error.code, str(error))
        except HpackError as error:
            self.abort(frames.COMPRESSION_ERROR, f"bad header block: {error}")
        except Exception:  # a bug must cost this connection only, never the relay
            log.exception("handling HTTP/2 frames failed")
            self.abort(frames.INTERNAL_ERROR, "internal error")
        finally:
            if outermost:
                batch.flush()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # --- hooks for subclasses -------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, block: HeaderBlock, end_stream: bool) -> None:
        raise NotImplementedError

    def on_data(self, stream_id: int, data: memoryview, end_stream: bool, flow_length: int) -> None:
        raise NotImplementedError

    def on_reset(self, stream_id: int, code: int) -> None:
        raise NotImplementedError

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        """The peer will not process streams above `last_stream_id`."""

    def on_settings(self) -> None:
        """The peer's settings changed (e.g. its concurrent stream limit)."""

    def on_drained(self, sender: Sender) -> None:
        """Everything queued on `sender` went out (a paused receive window elsewhere may reopen)."""

    def on_connection_lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    # --- receiving ------------------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        """Handle every complete frame in `data` (DATA, HEADERS and WINDOW_UPDATE inline: they are most frames)."""
        pos = 0
        end = len(data)
        if self._preface:
            if end < len(frames.PREFACE):
                self._keep(data, len(frames.PREFACE))
                return
            if data[:len(frames.PREFACE)] != frames.PREFACE:
                raise H2ProtocolError(frames.PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self._preface = False
            pos = len(frames.PREFACE)
        if self._first_settings and end - pos >= 9:
            if data[pos + 3] != frames.SETTINGS or data[pos + 4] & frames.ACK:
                raise H2ProtocolError(frames.PROTOCOL_ERROR, "the client preface is not followed by SETTINGS")
            self._first_settings = False
        view = memoryview(data)
        guard = self.guard
        unpack = frames.FRAME_HEADER.unpack_from
        while end - pos >= 9:
            high, low, kind, flags, stream_id = unpack(data, pos)
            length = (high << 16) | low
            stop = pos + 9 + length
            if stop > end:
                if length > MAX_FRAME:
                    raise H2ProtocolError(frames.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                break
            stream_id &= 0x7FFF_FFFF
            payload = view[pos + 9:stop]
            pos = stop
            if self._block_stream:
                if kind != frames.CONTINUATION:
                    raise H2ProtocolError(frames.PROTOCOL_ERROR, "header block interrupted")
                self._continuation(stream_id, flags, payload)
            elif kind == frames.DATA:
                if not stream_id:
                    raise H2ProtocolError(frames.PROTOCOL_ERROR, "DATA on stream 0")
                self._owed += length
                if self._owed >= CONNECTION_UPDATE_AT:
                    self.write(frames.window_update(0, self._owed))
                    self._owed = 0
                if flags & frames.PADDED:
                    payload = self._unpad(payload)
                if payload or flags & frames.END_STREAM:
                    if guard.empty:
                        guard.empty = 0
                elif guard.empty_frame():
                    raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many empty frames")
                self.on_data(stream_id, payload, bool(flags & frames.END_STREAM), length)
            elif kind == frames.HEADERS:
                if not stream_id:
                    raise H2ProtocolError(frames.PROTOCOL_ERROR, "HEADERS on stream 0")
                if flags & frames.PADDED:
                    payload = self._unpad(payload)
                if flags & frames.PRIORITY_FLAG:
                    if len(payload) < 5:
                        raise H2ProtocolError(frames.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                    payload = payload[5:]
                if payload or flags & frames.END_STREAM:
                    if guard.empty:
                        guard.empty = 0
                elif guard.empty_frame():
                    raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many empty frames")
                if len(payload) > self.limits.max_header_block_bytes and guard.header_block(len(payload)):
                    raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "header block too large")
                if flags & frames.END_HEADERS:
                    self.on_headers(stream_id, self.decoder.decode(bytes(payload)), bool(flags & frames.END_STREAM))
                else:
                    self._block_stream = stream_id
                    self._block = bytearray(payload)
                    self._block_end_stream = bool(flags & frames.END_STREAM)
            elif kind == frames.WINDOW_UPDATE:
                if length != 4:
                    raise H2ProtocolError(frames.FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
                if guard.control_frame(self._loop.time()):
                    raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many control frames")
                increment = int.from_bytes(payload, "big") & 0x7FFF_FFFF
                if stream_id:
                    sender = self.senders.get(stream_id)
                    if sender is not None:
                        sender.window += increment
                        if sender.queue or sender.trailers is not None:
                            self._pump(sender)
                else:
                    self._connection_window(increment)
            elif kind == frames.RST_STREAM:
                self._reset_received(stream_id, payload)
            elif kind == frames.PUSH_PROMISE:
                raise H2ProtocolError(frames.PROTOCOL_ERROR, "push is disabled")
            elif kind == frames.CONTINUATION:
                raise H2ProtocolError(frames.PROTOCOL_ERROR, "unexpected CONTINUATION")
            else:  # the other control frames, each within the guard's budget
                if guard.control_frame(self._loop.time()):
                    raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many control frames")
                if kind == frames.SETTINGS:
                    self._settings(stream_id, flags, payload)
                elif kind == frames.PING:
                    if length != 8:
                        raise H2ProtocolError(frames.FRAME_SIZE_ERROR, "PING length")
                    if stream_id:
                        raise H2ProtocolError(frames.PROTOCOL_ERROR, "PING on a stream")
                    if not flags & frames.ACK:
                        self.write(frames.ping_ack(bytes(payload)))
                elif kind == frames.GOAWAY and length >= 8:
                    self.on_goaway(frames.unpack_u31(payload), frames.unpack_u32(payload, 4))
                # PRIORITY and unknown frame types are ignored
            if self.closed:
                return
        if pos < end:
            self._keep(data[pos:], 0)

    def _keep(self, rest: bytes, needed: int) -> None:
        """Hold an incomplete frame until `needed` bytes (or its whole length, once known) have arrived."""
        if not needed and len(rest) >= 9:
            high, low, _, _, _ = frames.FRAME_HEADER.unpack_from(rest, 0)
            needed = 9 + ((high << 16) | low)
        self._received = [rest]
        self._received_bytes = len(rest)
        self._needed = needed or 9

    def _unpad(self, payload: memoryview) -> memoryview:
        if not payload:
            raise H2ProtocolError(frames.PROTOCOL_ERROR, "padded frame without pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2ProtocolError(frames.PROTOCOL_ERROR, "padding exceeds the frame")
        return payload[1:len(payload) - pad]

    def _continuation(self, stream_id: int, flags: int, payload: memoryview) -> None:
        if stream_id != self._block_stream:
            raise H2ProtocolError(frames.PROTOCOL_ERROR, "CONTINUATION on another stream")
        guard = self.guard
        if not payload:
            if guard.empty_frame():
                raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "too many empty frames")
        elif guard.empty:
            guard.empty = 0
        block = self._block
        block += payload
        if len(block) > self.limits.max_header_block_bytes and guard.header_block(len(block)):
            raise H2ProtocolError(frames.ENHANCE_YOUR_CALM, "header block too large")
        if flags & frames.END_HEADERS:
            self._block_stream = 0
            self._block = bytearray()
            self.on_headers(stream_id, self.decoder.decode(bytes(block)), self._block_end_stream)

    def _settings(self, stream_id: int, flags: int, payload: memoryview) -> None:
        """Apply the peer's settings and acknowledge them before anything they allow is sent: gRPC's library only
        grants a larger window once it has our acknowledgement."""
        if stream_id:
            raise H2ProtocolError(frames.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & frames.ACK:
            if payload:
                raise H2ProtocolError(frames.FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise H2ProtocolError(frames.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        grown = False
        for key, value in frames.unpack_settings(bytes(payload)):
            if key == frames.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > frames.MAX_WINDOW:
                    raise H2ProtocolError(frames.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for sender in self.senders.values():
                    sender.window += delta
                grown = grown or delta > 0
            elif key == frames.SETTINGS_MAX_FRAME_SIZE:
                if not frames.DEFAULT_MAX_FRAME <= value <= 16_777_215:
                    raise H2ProtocolError(frames.PROTOCOL_ERROR, "invalid max frame size")
                self.peer_max_frame = value
            elif key == frames.SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == frames.SETTINGS_HEADER_TABLE_SIZE:
                self.encoder.set_max_size(value)
        self.write(frames.SETTINGS_ACK)
        if grown:
            for sender in list(self.senders.values()):
                if sender.queue or sender.trailers is not None:
                    self._pump(sender)
        self.on_settings()

    def _connection_window(self, increment: int) -> None:
        self.send_window += increment
        if self.send_window > frames.MAX_WINDOW:
            raise H2ProtocolError(frames.FLOW_CONTROL_ERROR, "connection window overflow")
        blocked = self._blocked
        while blocked and self.send_window > 0:
            self._pump(blocked.pop(next(iter(blocked))))

    def _reset_received(self, stream_id: int, payload: memoryview) -> None:
        if len(payload) != 4 or not stream_id:
            raise H2ProtocolError(frames.PROTOCOL_ERROR, "malformed RST_STREAM")
        self._forget(stream_id)
        self.on_reset(stream_id, frames.unpack_u32(payload))

    # --- sending --------------------------------------------------------------------------------------------

    def write(self, data: Chunk) -> None:
        """Queue bytes for the socket: they go out in one write when the frames being handled are done (or, outside
        of frame handling, once the event loop turns)."""
        if self.closed:
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            batch = self._batch
            if batch.active:
                batch.dirty.append(self)
            else:
                self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self.transport is None or self.closed:
            out.clear()
            return
        data = bytes(out[0]) if len(out) == 1 else b"".join(out)
        out.clear()
        self.transport.write(data)

    def grant(self, stream_id: int, increment: int) -> None:
        """Reopen a stream's receive window by `increment` bytes."""
        if increment > 0 and not self.closed:
            self.write(frames.window_update(stream_id, increment))

    def open_sender(self, stream_id: int) -> Sender:
        sender = self.senders[stream_id] = Sender(stream_id, self.peer_initial_window)
        return sender

    def send_headers(self, sender: Sender, fields: Iterable[Header], end_stream: bool, key: object = None,
                     literal: bytes = b"") -> None:
        """HEADERS with `fields` (see HeaderEncoder.encode for `key`) and `literal`, pre-encoded fields that do
        not touch the table. Final headers wait for queued DATA; they are encoded only when they go out, as
        blocks must reach the peer in the order they were encoded."""
        if sender.closed or self.closed:
            return
        if end_stream and sender.queue:
            sender.trailers = (fields, key, literal)
            return
        self.write_headers(sender.stream_id, fields, end_stream, key, literal)
        if end_stream:
            self._close_sender(sender)

    def write_headers(self, stream_id: int, fields: Iterable[Header], end_stream: bool, key: object = None,
                      literal: bytes = b"") -> None:
        block = self.encoder.encode(fields, key)
        self.write(frames.headers(stream_id, block + literal if literal else block, end_stream, self.peer_max_frame))
        self.guard.control = 0  # control frames that answer our output are earned

    def send_data(self, sender: Sender, data: Chunk, end_stream: bool) -> None:
        """Send DATA within the windows; what does not fit waits in the sender's queue."""
        if sender.closed or self.closed:
            return
        size = len(data)
        if not sender.queue and size <= sender.window and size <= self.send_window and size <= self.peer_max_frame:
            sender.window -= size
            self.send_window -= size
            self.guard.control = 0
            self.write(frames.frame_header(frames.DATA, frames.END_STREAM if end_stream else 0, sender.stream_id,
                                           size))
            if size:
                self.write(data)
            if end_stream:
                self._close_sender(sender)
            return
        if size:
            sender.queue.append(data)
            sender.queued += size
        sender.end_stream = sender.end_stream or end_stream
        self._pump(sender)

    def _pump(self, sender: Sender) -> None:
        queue = sender.queue
        max_frame = self.peer_max_frame
        while queue:
            allowed = min(sender.window, self.send_window, max_frame)
            if allowed <= 0:
                if sender.window > 0:
                    self._blocked[sender.stream_id] = sender
                return
            chunk = queue[0]
            if len(chunk) <= allowed:
                queue.popleft()
                piece = chunk
            else:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                piece = view[:allowed]
                queue[0] = view[allowed:]
            size = len(piece)
            sender.window -= size
            sender.queued -= size
            self.send_window -= size
            last = not queue and sender.end_stream
            self.guard.control = 0
            self.write(frames.frame_header(frames.DATA, frames.END_STREAM if last else 0, sender.stream_id, size))
            self.write(piece)
            if last:
                self._close_sender(sender)
                return
        if sender.end_stream and not sender.closed:  # END_STREAM with no data left
            self.write(frames.frame_header(frames.DATA, frames.END_STREAM, sender.stream_id, 0))
            self._close_sender(sender)
            return
        if sender.trailers is not None:
            fields, key, literal = sender.trailers
            sender.trailers = None
            self.write_headers(sender.stream_id, fields, True, key, literal)
            self._close_sender(sender)
            return
        self.on_drained(sender)

    def _close_sender(self, sender: Sender) -> None:
        sender.closed = True
        self._forget(sender.stream_id)

    def _forget(self, stream_id: int) -> None:
        sender = self.senders.pop(stream_id, None)
        if sender is not None:
            sender.closed = True
            sender.queue.clear()
            sender.queued = 0
            self._blocked.pop(stream_id, None)

    def reset(self, stream_id: int, code: int) -> None:
        """Send RST_STREAM and drop whatever the stream still had queued."""
        self._forget(stream_id)
        self.write(frames.rst_stream(stream_id, code))

    def drop_sender(self, stream_id: int) -> None:
        """Forget a stream's sending half without telling the peer (the stream ended otherwise)."""
        sender = self.senders.get(stream_id)
        if sender is not None and sender.trailers is None and not sender.queue:
            self._forget(stream_id)

    def abort(self, code: int, message: str) -> None:
        """End the connection: GOAWAY with `code`, then close."""
        if self.closed or self.transport is None:
            return
        log.info("closing an HTTP/2 connection: %s", message)
        self.write(frames.goaway(self.last_peer_stream(), code, message.encode()[:256]))
        self.close()
        self.closed = True

    def last_peer_stream(self) -> int:
        return 0

    def close(self) -> None:
        """Write what is queued and close; a peer that does not take it within a linger is cut off."""
        transport = self.transport
        if transport is not None and not self.closed:
            self.flush()
            transport.close()
            if self._linger is None:
                self._linger = self._loop.call_later(CLOSE_LINGER_SECONDS, transport.abort)
