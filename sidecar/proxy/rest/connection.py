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

Limits on slow or idle clients (`ClientLimits`) are enforced without a timer per request: the owner calls
`enforce_timeouts` on every open connection from one periodic sweep, and each connection reads its own state
(which request it is in, and in which part of it) to decide. A connection is in exactly one phase:
- head: a request line or header fields are arriving. They must be complete within `header_timeout`, counted
  from the first byte of the request, or from accepting the connection for its first request (as nginx's
  client_header_timeout); else 408 and close.
- body: the header fields are complete and the body is arriving. It must be complete within `body_timeout` of
  the end of the header fields (a stall longer than that fails too); else 408 and close.
- busy: a request is queued or being answered. No client timeout runs: the upstream timeout covers it (and the
  stream idle timeout a streamed answer).
- idle: nothing in flight and nothing arriving. After `idle_timeout` (or `header_timeout` when the connection has
  not sent a first request) it is closed quietly, without an answer, since there is no request to answer.
Whatever the phase, response bytes waiting to be sent must make progress: a client that takes none of them for
`send_timeout` (it does not read; as nginx's send_timeout) has its connection aborted. Without that, a client that
never reads its answers would hold its connection open for ever, closing included (a close waits for the buffer).
The head and body clocks stop while the proxy itself holds the client back (reading paused because enough
pipelined requests are queued, or a `100 Continue` not sent yet because earlier answers are pending) and start
again from zero when it lets go. The sweep notes when it first saw a phase (by the request's `started` stamp,
which each request has anyway), so a deadline fires between its timeout and its timeout plus two sweep periods.

A connection accepted while `max_connections` are open is refused: see `RestClientConnection.refuse`.
Every limit reached adds one to its entry in `ClientLimits.events`.

A response is written whole (`respond`) or streamed (`start_stream`, `send_stream`, then `end_stream`); while a
stream runs the connection is busy, so only the send timeout applies to it, and the stream's `StreamFlow` is told
when the client's write buffer goes above its high-water mark (`pause_stream`) and back below the low one
(`resume_stream`), so the producer can stop reading its upstream meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from time import perf_counter
from typing import Protocol, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from sidecar.proxy.rest.http import CLOSE_LINE, CONTINUE_RESPONSE, KEEP_ALIVE_LINE, error_response

MAX_HEADER_BYTES = 64 * 1024
MAX_QUEUED = 16  # pipelined requests buffered before the connection stops reading
LINGER_SECONDS = 2.0
_LARGE_WRITE = 64 * 1024

# Names of the limits, as keys of `ClientLimits.events` (and the `limit` label they are exported with).
HEADER_TIMEOUT = "header_timeout"  # head not complete in time (408), or a new connection silent too long
BODY_TIMEOUT = "body_timeout"  # body not complete in time after its head (408)
IDLE_TIMEOUT = "idle_timeout"  # keep-alive connection closed after waiting too long for its next request
SEND_TIMEOUT = "send_timeout"  # connection aborted: the client took none of the pending response bytes in time
MAX_CONNECTIONS = "max_connections"  # connection refused with 503: too many open
HEADER_TOO_LARGE = "header_too_large"  # request line and header fields over MAX_HEADER_BYTES (431)
BODY_TOO_LARGE = "body_too_large"  # body over the body size limit (413)
# Limits of streamed responses (counted by the proxy, see proxy.py):
STREAM_IDLE_TIMEOUT = "stream_idle_timeout"  # a streamed response cut: the upstream sent nothing for that long
STREAM_WRITE_BUFFER = "stream_write_buffer"  # a streamed response paused: the client's write buffer was full
LIMITS: tuple[str, ...] = (HEADER_TIMEOUT, BODY_TIMEOUT, IDLE_TIMEOUT, SEND_TIMEOUT, MAX_CONNECTIONS,
                           HEADER_TOO_LARGE, BODY_TOO_LARGE, STREAM_IDLE_TIMEOUT, STREAM_WRITE_BUFFER)
_STATUS_LIMITS = {431: HEADER_TOO_LARGE, 413: BODY_TOO_LARGE}

TOO_MANY_CONNECTIONS = error_response(503, "too many connections", connection_line=CLOSE_LINE)

# Phases of `RestClientConnection._timed_phase`: none, the head of a request, its body.
_UNTIMED, _HEAD, _BODY = 0, 1, 2


class ClientLimits:
    """What one listener's client connections may take, and how many times each limit was reached.

    `events` maps every name in `LIMITS` to a count; the owner exports it (see `RestProxy.limit_events`). The
    defaults are the settings' defaults (`ProxySettings.rest_*`); `max_connections` is checked by connections
    given a registry of open connections.
    """

    __slots__ = ("body_timeout", "events", "header_timeout", "idle_timeout", "max_connections", "send_timeout")

    def __init__(self, header_timeout: float = 20.0, body_timeout: float = 60.0, idle_timeout: float = 75.0,
                 send_timeout: float = 60.0, max_connections: int = 4096,
                 events: dict[str, int] | None = None) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self.events: dict[str, int] = {name: 0 for name in LIMITS} if events is None else events
        for name in LIMITS:
            self.events.setdefault(name, 0)

    def sweep_interval(self) -> float:
        """How often the owner should call `enforce_timeouts`: a quarter of the shortest timeout, 10 ms to 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.idle_timeout, self.send_timeout)
        return min(1.0, max(0.01, shortest / 4))


_DEFAULT_LIMITS = ClientLimits()


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


class StreamFlow(Protocol):
    """The producer of a streamed response, told when the client falls behind and when it has caught up."""

    def pause_stream(self) -> None: ...

    def resume_stream(self) -> None: ...


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
    # Slots: with 30 or more instance attributes, CPython 3.11's instance dicts stop sharing keys and every attribute
    # read gets slower (31.8 -> 35.2 ns for three reads; 0.6 us per request in bench/rest_hotpath.py).
    __slots__ = ("_closing", "_continue_sent", "_discarding", "_handler", "_head_received", "_header_bytes", "_in_head",
                 "_in_serve", "_limits", "_linger", "_loop", "_max_body", "_parser", "_parsing", "_queue", "_raw_body",
                 "_reading_paused", "_registry", "_sent_seen", "_sent_since", "_stream", "_timed_key",
                 "_timed_phase", "_timed_since", "_writing_paused", "_written", "active", "closed", "idle_since",
                 "refused", "transport")

    def __init__(self, handler: RequestHandler, max_body_bytes: int, loop: asyncio.AbstractEventLoop,
                 registry: set[RestClientConnection] | None = None, limits: ClientLimits | None = None) -> None:
        self._handler = handler
        self._max_body = max_body_bytes
        self._loop = loop
        self._registry = registry  # the open connections, kept by the owner; with it, max_connections applies
        self._limits = limits or _DEFAULT_LIMITS
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
        self._stream: StreamFlow | None = None  # the producer of the response being streamed
        self._in_serve = False
        self._continue_sent: IncomingRequest | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # loop time when the connection last had nothing to do
        self._timed_phase = _UNTIMED  # what the sweep is timing: see enforce_timeouts
        self._timed_key = 0.0  # the `started` stamp of the request it is timing
        self._timed_since = 0.0  # loop time the sweep first saw that phase of that request
        self._written = 0  # response bytes handed to the transport (0: nothing answered yet)
        self._sent_seen = -1  # of those, how many had left its buffer at the sweep that saw the last progress
        self._sent_since = 0.0  # loop time of that sweep
        self.refused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        registry = self._registry
        if registry is not None:
            if len(registry) >= self._limits.max_connections:
                self.refuse()
                return
            registry.add(self)
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
                    self._reject(reject.status, reject.message, _STATUS_LIMITS.get(reject.status))
            except HttpParserError as exc:
                self._reject(400, f"malformed HTTP request: {exc or type(exc).__name__}")
            else:
                if self._in_head and self._head_received > 2 * MAX_HEADER_BYTES:
                    self._reject(431, f"request line and header fields exceed {MAX_HEADER_BYTES} bytes",
                                 HEADER_TOO_LARGE)
        if self.active is None:
            self._serve_next()

    def eof_received(self) -> bool | None:
        return None  # like nginx: a client that stops sending has gone away; close and cancel its request

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._stream is not None:
            self._stream.pause_stream()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._stream is not None:
            self._stream.resume_stream()
        if self.active is None:
            self._serve_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._registry is not None:
            self._registry.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        self._queue.clear()
        self._stream = None
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
        self._written += len(head) + len(body)
        self.idle_since = self._loop.time()
        if not keep_alive:
            self._close(graceful=request.error is not None)
            return
        if not self._in_serve:
            self._serve_next()

    def start_stream(self, request: IncomingRequest, head: bytes, flow: StreamFlow,
                     buffer_bytes: int | None = None) -> bool:
        """Send the head (and any first body bytes) of a streamed response to `request`; its body follows through
        `send_stream` and `end_stream` finishes it. `flow` hears when the client falls behind: the write buffer over
        `buffer_bytes` (the transport's high-water mark; its low one is a quarter) and when it caught up. False when
        the client is gone or `request` is not the active one (then nothing is sent)."""
        transport = self.transport
        if request is not self.active or self.closed or transport is None:
            return False
        if buffer_bytes is not None:
            transport.set_write_buffer_limits(high=buffer_bytes)
        behind = self._writing_paused  # the client has not taken earlier answers yet
        self._stream = flow
        transport.write(head)  # may call pause_writing, which tells `flow`
        self._written += len(head)
        if behind:
            flow.pause_stream()
        return True

    def send_stream(self, request: IncomingRequest, parts: list[bytes]) -> None:
        """More bytes of the response being streamed to `request`, in one write (ignored when the client is gone)."""
        transport = self.transport
        if request is not self.active or self.closed or transport is None:
            return
        size = sum(map(len, parts))
        if size >= _LARGE_WRITE and len(parts) > 1:
            transport.writelines(parts)
        elif size:
            transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        self._written += size

    def end_stream(self, request: IncomingRequest, tail: bytes, keep_alive: bool, complete: bool = True) -> None:
        """Finish the response streamed to `request`: write `tail` (the last chunk, or nothing), then go on with the
        next request or close as `keep_alive` says. A stream that is not `complete` (it broke off) closes the
        connection after what was written, so the client sees the response end early instead of a whole one."""
        if request is not self.active or self.closed or self.transport is None:
            return
        self._stream = None
        if not complete:
            self.active = None
            self._close(graceful=False)
            return
        self.respond(request, tail, b"", keep_alive)

    def shutdown(self) -> None:
        """Finish the requests already received, then close (the proxy is stopping)."""
        self._closing = True
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.active is None and not self._queue:
            self._close(graceful=False)

    def refuse(self) -> None:
        """Answer a connection over `max_connections` with `503 {"error": "too many connections"}` and close it.

        Production proxies either answer or close: Envoy's listener limit closes the accepted connection at once
        (the client sees a reset or a refused connect, only a counter tells why), while nginx's limit_conn and
        uvicorn's limit_concurrency answer 503. This proxy answers, because its clients are model clients for
        which a reset looks like a network fault and is retried or reported as one, while a 503 in the model
        server's error shape says what happened and that it is worth retrying later (possibly on another
        replica). The answer goes out at once, before any request is read, with `Connection: close`; the
        connection then closes gracefully (FIN, what the client still sends is discarded, closed at the client's
        EOF or after LINGER_SECONDS at most), so the client reads the 503 instead of a reset. A refused connection
        is not in the registry: it does not count against the limit while it lingers, and costs one timer.
        """
        transport = self.transport
        if transport is None:
            return
        self.refused = True
        self._limits.events[MAX_CONNECTIONS] += 1
        self._discarding = True
        transport.write(TOO_MANY_CONNECTIONS)
        self._close(graceful=True)

    def enforce_timeouts(self, now: float) -> bool:
        """Apply the header, body, idle and send timeouts at loop time `now` (called by the owner's periodic sweep).

        True when this call answered 408 or closed the connection; see the module docstring for the phases.
        """
        transport = self.transport
        if transport is None or self.closed:
            return False
        limits = self._limits
        pending = transport.get_write_buffer_size()
        if pending:
            sent = self._written - pending
            if sent != self._sent_seen:
                self._sent_seen = sent
                self._sent_since = now
            elif now - self._sent_since > limits.send_timeout:
                limits.events[SEND_TIMEOUT] += 1
                transport.abort()
                return True
        else:
            self._sent_seen = -1
        if self._discarding or transport.is_closing():
            return False
        request = self._parsing
        if request is None and self._raw_body is None:
            self._timed_phase = _UNTIMED
            if self.active is not None or self._queue:
                return False  # busy: the upstream's timeout applies
            if self._written:  # it has answered a request: a keep-alive connection waiting for the next
                if now - self.idle_since <= limits.idle_timeout:
                    return False
                limits.events[IDLE_TIMEOUT] += 1
            else:
                if now - self.idle_since <= limits.header_timeout:
                    return False
                limits.events[HEADER_TIMEOUT] += 1  # connected, never sent a request
            self._close(graceful=False)
            return True
        if self._reading_paused or (request is not None and request.expect_continue and not request.body_size
                                    and self._continue_sent is not request):
            self._timed_phase = _UNTIMED  # the proxy holds the client back; its clock starts again afterwards
            return False
        if request is not None and self._in_head:
            phase, key, limit = _HEAD, request.started, limits.header_timeout
        else:
            body_request = request or self._raw_body
            assert body_request is not None
            phase, key, limit = _BODY, body_request.started, limits.body_timeout
        if phase != self._timed_phase or key != self._timed_key:
            self._timed_phase = phase
            self._timed_key = key
            # a connection's first request has had its head clock running since the connection was accepted
            first = phase == _HEAD and not self._written and self.active is None and not self._queue
            self._timed_since = min(now, self.idle_since) if first else now
        if now - self._timed_since <= limit:
            return False
        self._timed_phase = _UNTIMED
        if phase == _HEAD:
            self._reject(408, f"request header fields not received within {limit:g}s", HEADER_TIMEOUT)
        else:
            self._reject(408, f"request body not received within {limit:g}s", BODY_TIMEOUT)
        if self.active is None:
            self._serve_next()
        return True

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
        self._written += len(CONTINUE_RESPONSE)

    def _reject(self, status: int, message: str, limit: str | None = None) -> None:
        """Queue an error answer for the request being parsed and stop reading requests; count `limit` if given."""
        request = self._parsing or self._raw_body or IncomingRequest(self, perf_counter())
        self._parsing = None
        self._raw_body = None
        if limit is not None:
            self._limits.events[limit] += 1
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
