"""The client side of the REST proxy: one HTTP/1.1 server connection (asyncio.Protocol + httptools).

It turns bytes into whole buffered requests and hands them, one at a time and in arrival order, to a handler;
responses therefore leave in request order even when a client pipelines. It owns everything about the client
connection: keep-alive (HTTP/1.1 default, HTTP/1.0 with `Connection: keep-alive`), `Expect: 100-continue`,
de-chunking, the body and header size limits, flow control both ways, and closing.

Requests it cannot accept (malformed 400, too large 413/431, header fields too slow 408, CONNECT 405, a transfer
coding other than chunked 501) still go to the handler, with `error` set, so that they get the same prediction id
and metrics as any other; after such an answer the connection closes gracefully: it sends FIN, discards what the
client still sends for a moment, then closes, so the client reads the answer instead of a reset. A client that
stops sending (EOF) counts as gone, as in nginx: its request in flight is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from time import perf_counter
from typing import Protocol, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from sidecar.proxy.rest.http import CLOSE_LINE, CONTINUE_RESPONSE, KEEP_ALIVE_LINE

MAX_HEADER_BYTES = 64 * 1024
MAX_QUEUED = 16  # pipelined requests buffered before the connection stops reading
LINGER_SECONDS = 2.0
_LARGE_WRITE = 64 * 1024


class IncomingRequest:
    """One buffered client request. `headers` keeps (lower name, name, value) in order; `fields` maps lower names
    to values (repeats joined with ", "). `started` is `time.perf_counter()` at its first byte (the loop's clock
    is too coarse under uvloop: milliseconds). `state` belongs to the handler."""

    __slots__ = ("body_parts", "body_size", "chunked", "connection", "content_length", "error", "expect_continue",
                 "fields", "headers", "http10", "keep_alive", "method", "started", "state", "target", "upgrade")

    def __init__(self, connection: RestClientConnection, started: float) -> None:
        self.connection = connection
        self.started = started
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.fields: dict[bytes, bytes] = {}
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.content_length: int | None = None
        self.chunked = False
        self.http10 = False
        self.keep_alive = True
        self.expect_continue = False
        self.upgrade = False
        self.error: tuple[int, str] | None = None
        self.state: object = None

    @property
    def body(self) -> bytes:
        parts = self.body_parts
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)


class RequestHandler(Protocol):
    def handle(self, request: IncomingRequest) -> None:
        """Answer, now or later, through `request.connection.respond(...)`."""

    def aborted(self, request: IncomingRequest) -> None:
        """The client went away while `request` was being answered."""


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RestClientConnection(asyncio.Protocol):
    def __init__(self, handler: RequestHandler, max_body_bytes: int, loop: asyncio.AbstractEventLoop,
                 registry: set[RestClientConnection] | None = None) -> None:
        self._handler = handler
        self._max_body = max_body_bytes
        self._loop = loop
        self._registry = registry  # the open connections, kept by the owner
        self._parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._parsing: IncomingRequest | None = None
        self._queue: deque[IncomingRequest] = deque()
        self.active: IncomingRequest | None = None
        self._raw_body: IncomingRequest | None = None  # body of an Upgrade request, read past the parser
        self._header_bytes = 0
        self._in_head = False  # between the start of a request and the end of its header fields
        self._head_received = 0  # bytes received while in a request head (httptools buffers a field whole)
        self._discarding = False
        self._closing = False
        self.closed = False
        self._reading_paused = False
        self._writing_paused = False
        self._in_serve = False
        self._continue_sent: IncomingRequest | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # loop time when the connection last had nothing to do

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._registry is not None:
            self._registry.add(self)
        self.idle_since = self._loop.time()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._raw_body is not None:
            data = self._take_raw_body(data)
        if data:
            if self._in_head:
                self._head_received += len(data)
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as exc:
                self._upgraded(data[int(exc.args[0]):])
                return
            except HttpParserCallbackError as exc:
                reject = exc.__context__ if isinstance(exc.__context__, _Reject) else None
                if reject is None:
                    self._reject(400, f"malformed HTTP request: {exc}")
                else:
                    self._reject(reject.status, reject.message)
            except HttpParserError as exc:
                self._reject(400, f"malformed HTTP request: {exc or type(exc).__name__}")
            else:
                if self._in_head and self._head_received > 2 * MAX_HEADER_BYTES:
                    self._reject(431, f"request line and header fields exceed {MAX_HEADER_BYTES} bytes")
        if self.active is None:
            self._serve_next()

    def eof_received(self) -> bool | None:
        return None  # like nginx: a client that stops sending has gone away; close and cancel its request

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.active is None:
            self._serve_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._registry is not None:
            self._registry.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        self._queue.clear()
        request, self.active = self.active, None
        if request is not None:
            self._handler.aborted(request)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._parsing = IncomingRequest(self, perf_counter())
        self._header_bytes = 0
        self._in_head = True
        self._head_received = 0

    def on_url(self, url: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.target += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, f"request line and header fields exceed {MAX_HEADER_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        lower = name.lower()
        request.headers.append((lower, name, value))
        fields = request.fields
        previous = fields.get(lower)
        fields[lower] = value if previous is None else previous + b", " + value
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Reject(431, f"request line and header fields exceed {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._parsing
        assert request is not None
        parser = self._parser
        request.method = parser.get_method()
        request.http10 = parser.get_http_version() == "1.0"
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        fields = request.fields
        length = fields.get(b"content-length")
        if length is not None:
            request.content_length = int(length)  # llhttp has checked it is one decimal number
            if request.content_length > self._max_body:
                raise _Reject(413, f"request body of {request.content_length} bytes exceeds the limit of "
                                   f"{self._max_body} bytes")
        coding = fields.get(b"transfer-encoding")
        if coding is not None:
            if coding.strip().lower() != b"chunked":  # the body is re-framed; other codings would be lost
                raise _Reject(501, f"transfer coding {coding.decode('latin-1')!r} is not supported")
            request.chunked = True
        if request.method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported by this proxy")
        expect = fields.get(b"expect")
        if expect is not None and not request.http10 and expect.lower() == b"100-continue":
            request.expect_continue = True
            self._maybe_send_continue()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.body_size += len(body)
        if request.body_size > self._max_body:
            raise _Reject(413, f"request body exceeds the limit of {self._max_body} bytes")
        request.body_parts.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._parsing = None
        if request.upgrade and request.content_length:
            self._raw_body = request  # llhttp skips the body of an Upgrade request; read it ourselves
            return
        self._enqueue(request)

    # responses
    def connection_line(self, request: IncomingRequest) -> tuple[bytes, bool]:
        """The `Connection` header line for the response to `request` and whether the connection stays open."""
        if not request.keep_alive or request.error is not None or (self._closing and not self._queue):
            return CLOSE_LINE, False
        if request.http10:
            return KEEP_ALIVE_LINE, True
        return b"", True

    def respond(self, request: IncomingRequest, head: bytes, body: bytes, keep_alive: bool) -> None:
        """Send the whole response to `request` (ignored when the client is gone or it is not the active one)."""
        if request is not self.active or self.closed or self.transport is None:
            return
        self.active = None
        transport = self.transport
        if len(body) >= _LARGE_WRITE:
            transport.writelines((head, body))
        else:
            transport.write(head + body)
        self.idle_since = self._loop.time()
        if not keep_alive:
            self._close(graceful=request.error is not None)
            return
        if not self._in_serve:
            self._serve_next()

    def shutdown(self) -> None:
        """Finish the requests already received, then close (the proxy is stopping)."""
        self._closing = True
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.active is None and not self._queue:
            self._close(graceful=False)

    def close_if_stalled(self, now: float, idle_timeout: float, head_timeout: float) -> bool:
        """Close a keep-alive connection that waited `idle_timeout` seconds (loop time `now`) without starting a
        request, or answer 408 to a request whose header fields took longer than `head_timeout` to arrive."""
        if self.closed:
            return False
        request = self._parsing
        if request is not None and self._in_head and perf_counter() - request.started > head_timeout:
            self._reject(408, f"request header fields not received within {head_timeout:g}s")
            if self.active is None:
                self._serve_next()
            return True
        if (self.active is None and not self._queue and request is None and self._raw_body is None
                and now - self.idle_since > idle_timeout):
            self._close(graceful=False)
            return True
        return False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # internals
    def _enqueue(self, request: IncomingRequest) -> None:
        self._queue.append(request)
        if len(self._queue) >= MAX_QUEUED and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _serve_next(self) -> None:
        if self._in_serve:
            return
        self._in_serve = True
        try:
            queue = self._queue
            while self.active is None and queue and not self._writing_paused and not self.closed:
                request = self.active = queue.popleft()
                if self._reading_paused and not self._closing and len(queue) < MAX_QUEUED // 2:
                    self._reading_paused = False
                    assert self.transport is not None
                    self.transport.resume_reading()
                self._handler.handle(request)
        finally:
            self._in_serve = False
        if self.active is None and not self._queue and not self.closed:
            if self._closing:
                self._close(graceful=False)
            else:
                self._maybe_send_continue()

    def _maybe_send_continue(self) -> None:
        """Tell a waiting client to send its body, once every earlier response has gone out."""
        request = self._parsing
        if (request is None or not request.expect_continue or request.body_size or self._continue_sent is request
                or self.active is not None or self._queue or self.transport is None or self._discarding):
            return
        self._continue_sent = request
        self.transport.write(CONTINUE_RESPONSE)

    def _reject(self, status: int, message: str) -> None:
        """Queue an error answer for the request being parsed and stop reading requests."""
        request = self._parsing or IncomingRequest(self, perf_counter())
        self._parsing = None
        request.error = (status, message)
        request.keep_alive = False
        self._discarding = True
        self._queue.append(request)

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped at an Upgrade request; we never upgrade, so serve it as a plain request."""
        request = self._raw_body or (self._queue[-1] if self._queue else None)
        if request is not None and request.chunked:
            self._raw_body = None
            if request not in self._queue:
                self._queue.append(request)
            request.error = (400, "a chunked body on an Upgrade request is not supported")
            request.keep_alive = False
            self._discarding = True
            rest = b""
        if rest:
            self.data_received(rest)
        elif self.active is None:
            self._serve_next()

    def _take_raw_body(self, data: bytes) -> bytes:
        request = self._raw_body
        assert request is not None and request.content_length is not None
        needed = request.content_length - request.body_size
        chunk = data[:needed]
        request.body_parts.append(chunk)
        request.body_size += len(chunk)
        if request.body_size >= request.content_length:
            self._raw_body = None
            self._enqueue(request)
        return data[needed:]

    def _close(self, graceful: bool) -> None:
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            return
        if graceful and transport.can_write_eof():
            self._discarding = True
            transport.write_eof()
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
            self._linger = self._loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()
