"""Keep-alive pool of HTTP/1.1 connections to the REST upstream, built on asyncio Protocols and httptools.

One exchange at a time per connection. A caller hands over a ready request (head bytes and body) and a
listener; the pool calls exactly one listener method, once, unless the caller cancels first, and never from
inside `send` itself. A cancelled or failed exchange closes its connection: only connections that delivered a
complete response with keep-alive go back to the idle stack (LIFO, so a few stay warm).

Failures carry a reason for metrics and for the status the proxy answers with: `refused` (cannot connect),
`reset` (closed before a whole response), `timeout` (no connection or no whole response in time) and `protocol`
(the upstream sent something that is not HTTP). A request that fails on a reused idle connection before a single
response byte arrived is retried once on a fresh connection, because the upstream may have closed that idle
connection just as the request went out. The response timeout covers connecting, sending and the whole answer; it
is kept on coarse deadlines (one timer for every exchange, see `deadlines`).

Streaming (`send(..., stream=True)`): a response whose end is not known from its head (chunked, or framed by the
connection closing) or that is `text/event-stream` is handed over as it arrives instead of whole, unless it is
already complete in the read that brought its head (then it is delivered whole, as any other). The listener gets
`upstream_stream(head, parts)` once, then `upstream_data(parts)` per read that carried body bytes (de-chunked,
one part per chunk, so the caller can keep the upstream's chunk boundaries), then `upstream_stream_end(None)` at
the end or `upstream_stream_end(failure)` when it broke off (`reset`, `protocol`, or `timeout` when no byte came for
`stream_idle_timeout`). From the head on, the response timeout no longer applies; the idle timeout does, checked
lazily: the exchange's one deadline is re-armed, when it fires, for what is left since the last read (no clock read
or timer per read beyond one `loop.time()`). `pause()`/`resume()` stop and restart reading from the upstream (the
caller's back-pressure); a paused stream is not idle. A stream that ended cleanly with keep-alive returns its
connection to the pool; a broken or cancelled one closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import NamedTuple, Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from sidecar.proxy.deadlines import Deadlines
from sidecar.proxy.rest.http import RESPONSE_DROP, connection_nominated

REFUSED = "refused"
RESET = "reset"
TIMEOUT = "timeout"
PROTOCOL = "protocol"
_LARGE_WRITE = 64 * 1024
# UpstreamExchange.stream
WHOLE = 0
MAY_STREAM = 1
STREAMING = 2


class UpstreamFailure(NamedTuple):
    reason: str
    detail: str


class UpstreamResponse(NamedTuple):
    """A whole upstream response. `header_lines` are its `Name: value\\r\\n` lines in order, hop-by-hop fields and
    X-Prediction-Id removed. `content_length` is the upstream's own Content-Length value when its line is among
    `header_lines` (then it is exact for the whole body, or describes the body a HEAD/304 answer leaves out); None
    when the upstream framed the body otherwise (chunked, connection close) and the caller must add one."""

    status: int
    reason: bytes
    header_lines: list[bytes]
    content_length: bytes | None
    body: bytes


class Listener(Protocol):
    def upstream_response(self, response: UpstreamResponse) -> None: ...

    def upstream_failed(self, failure: UpstreamFailure) -> None: ...


class StreamListener(Listener, Protocol):
    """What `send(..., stream=True)` also calls (see the module docstring). `head.body` is empty; `parts` are the
    body bytes received with the head (possibly none)."""

    def upstream_stream(self, head: UpstreamResponse, parts: list[bytes]) -> None: ...

    def upstream_data(self, parts: list[bytes]) -> None: ...

    def upstream_stream_end(self, failure: UpstreamFailure | None) -> None: ...


class UpstreamExchange:
    """One request in flight; `cancel()` drops it and closes its connection. `stream`: WHOLE (the response is
    delivered whole), MAY_STREAM (it may be streamed) or STREAMING (it is; `last_read` is then the loop time of the
    last read)."""

    __slots__ = ("_pool", "body", "connection", "deadline", "done", "head", "head_only", "last_read", "listener",
                 "retried", "stream")

    def __init__(self, pool: RestUpstreamPool, head: bytes, body: bytes, head_only: bool, listener: Listener,
                 stream: bool) -> None:
        self._pool = pool
        self.head = head
        self.body = body
        self.head_only = head_only
        self.listener = listener
        self.stream = MAY_STREAM if stream else WHOLE
        self.connection: RestUpstreamConnection | None = None
        self.deadline = pool.deadlines.arm(self, pool.response_timeout)
        self.done = False
        self.retried = False

    def cancel(self) -> None:
        if self.done:
            return
        self.done = True
        self._disarm()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abandon()

    def succeed(self, response: UpstreamResponse) -> None:
        if not self.done:
            self.done = True
            self._disarm()
            self.listener.upstream_response(response)

    def fail(self, failure: UpstreamFailure) -> None:
        if not self.done:
            self.done = True
            self._disarm()
            connection, self.connection = self.connection, None
            if connection is not None:
                connection.abandon()
            if self.stream is STREAMING:
                cast(StreamListener, self.listener).upstream_stream_end(failure)
            else:
                self.listener.upstream_failed(failure)

    def expired(self) -> None:
        pool = self._pool
        if self.stream is not STREAMING:
            self.fail(UpstreamFailure(TIMEOUT, f"upstream did not answer within {pool.response_timeout:g}s"))
            return
        idle = pool.stream_idle_timeout
        connection = self.connection
        if connection is not None and connection.paused:  # held back by the client, not idle
            self.deadline = pool.deadlines.arm(self, idle)
            return
        left = self.last_read + idle - pool.loop.time()
        if left > 0:
            self.deadline = pool.deadlines.arm(self, left)
            return
        self.fail(UpstreamFailure(TIMEOUT, f"upstream sent nothing for {idle:g}s in the middle of a streamed "
                                           f"response (rest_stream_idle_timeout)"))

    # streaming
    def start_streaming(self) -> StreamListener:
        """The response head has arrived and its body is streamed: the idle timeout replaces the response one."""
        pool = self._pool
        self.stream = STREAMING
        self.last_read = pool.loop.time()
        self._disarm()
        self.deadline = pool.deadlines.arm(self, pool.stream_idle_timeout)
        return cast(StreamListener, self.listener)

    def end_stream(self) -> None:
        """The streamed response is complete."""
        if not self.done:
            self.done = True
            self._disarm()
            self.connection = None
            cast(StreamListener, self.listener).upstream_stream_end(None)

    def pause(self) -> None:
        """Stop reading the streamed response (the reader is behind)."""
        if self.connection is not None:
            self.connection.pause()

    def resume(self) -> None:
        if self.connection is not None:
            self.connection.resume()
            self.last_read = self._pool.loop.time()  # the idle clock starts again when we read again

    def _disarm(self) -> None:
        self._pool.deadlines.disarm(self, self.deadline)


class RestUpstreamConnection(asyncio.Protocol):
    """A client connection to the upstream: writes one request, parses one response, repeats."""

    def __init__(self, pool: RestUpstreamPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self.exchange: UpstreamExchange | None = None
        self.reused = False
        self.closed = False
        self.paused = False
        self._begin_response()

    def _begin_response(self) -> None:
        self._reason = b""
        self._lines: list[bytes] = []
        self._names: list[bytes] = []
        self._nominated: set[bytes] | None = None
        self._length: bytes | None = None
        self._chunked = False
        self._body: list[bytes] = []
        self._headers_done = False
        self._complete = False
        self._received = False
        self._keep_alive = False
        self._invalid = ""
        self._streaming = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pool.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # bytes nobody asked for: this connection is out of step
            self.abandon()
            return
        if self._streaming:
            self._stream_received(data)
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            detail = self._invalid or str(exc) or type(exc).__name__
            self._fail(UpstreamFailure(PROTOCOL, f"invalid HTTP response from upstream: {detail}"))
            return
        if self._complete:
            self._deliver(keep_alive=self._keep_alive)
        elif self._streaming:
            self._start_stream()
        elif self._headers_done and self.exchange is not None and self.exchange.stream is MAY_STREAM:
            # a body with a Content-Length still to come: streamed if it is server-sent events (asked once, so
            # that an answer whole in one read, the usual case, pays nothing for it)
            self.exchange.stream = WHOLE
            if self._is_event_stream():
                self._streaming = True
                self._start_stream()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        exchange = self.exchange
        if exchange is None:
            return
        if self._streaming:
            self.exchange = None
            exchange.connection = None
            if self._length is None and not self._chunked:
                exchange.end_stream()  # framed by the end of the connection: complete now
            else:
                detail = "upstream closed the connection in the middle of a streamed response"
                exchange.fail(UpstreamFailure(RESET, f"{detail}: {exc}" if exc else detail))
            return
        if self._headers_done and self._length is None and not self._chunked:
            self._deliver(keep_alive=False)  # a response framed by the end of the connection: complete now
            return
        self.exchange = None
        exchange.connection = None
        if self.reused and not self._received and not exchange.retried:
            exchange.retried = True
            self._pool.connect(exchange)
        else:
            detail = "upstream closed the connection before a complete response"
            exchange.fail(UpstreamFailure(RESET, f"{detail}: {exc}" if exc else detail))

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # trailer fields: dropped, the body is re-framed with Content-Length
        lower = name.lower()
        if lower in RESPONSE_DROP or lower.startswith(b"proxy-"):
            if lower == b"transfer-encoding":
                if value.strip().lower() != b"chunked":  # the body is re-framed; other codings would be lost
                    self._invalid = f"unsupported transfer coding {value.decode('latin-1')!r}"
                    raise ValueError(self._invalid)
                self._chunked = True
            elif lower == b"connection":
                self._nominated = connection_nominated(value) | (self._nominated or set())
            return
        if lower == b"content-length":
            self._length = value
        self._lines.append(name + b": " + value + b"\r\n")
        self._names.append(lower)

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._parser.get_status_code()
        exchange = self.exchange
        if exchange is not None and status >= 200:
            if exchange.head_only:
                self._complete = True  # no body follows; the connection is not reused (the parser expects one)
            elif (self._length is None or self._chunked) and exchange.stream and status != 204 and status != 304:
                self._streaming = True  # its end is not known yet (a text/event-stream with a length: below)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # interim response: the real one follows
            self._begin_response()
            self._received = True
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the message is done

    # own
    def send(self, exchange: UpstreamExchange, reused: bool) -> None:
        assert self.transport is not None
        self.exchange = exchange
        exchange.connection = self
        self.reused = reused
        self._begin_response()
        if len(exchange.body) >= _LARGE_WRITE:
            self.transport.writelines((exchange.head, exchange.body))
        else:
            self.transport.write(exchange.head + exchange.body)

    def abandon(self) -> None:
        """Stop caring about the current exchange and close: the connection's state is unknown."""
        self.exchange = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()

    def _fail(self, failure: UpstreamFailure) -> None:
        exchange = self.exchange
        self.abandon()
        if exchange is not None:
            exchange.connection = None
            exchange.fail(failure)

    def _end_to_end(self) -> tuple[list[bytes], bytes | None]:
        """The response's header lines to pass on and its Content-Length value (see `UpstreamResponse`)."""
        lines = self._lines
        length = self._length
        if self._nominated or (self._chunked and length is not None):
            drop = (self._nominated or set()) | ({b"content-length"} if self._chunked else set())
            lines = [line for line, lower in zip(lines, self._names, strict=True) if lower not in drop]
            length = None if self._chunked else length
        return lines, length

    def _deliver(self, keep_alive: bool) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.exchange = None
        exchange.connection = None
        lines = self._lines
        length = self._length
        if self._nominated or (self._chunked and length is not None):
            lines, length = self._end_to_end()
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        response = UpstreamResponse(self._parser.get_status_code(), self._reason, lines, length, body)
        if keep_alive and not exchange.head_only and not self.closed:
            self._pool.release(self)
        elif not self.closed:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
        exchange.succeed(response)

    # streaming
    def _is_event_stream(self) -> bool:
        for line, lower in zip(self._lines, self._names, strict=True):
            if lower == b"content-type":
                return line[len(lower) + 2:len(lower) + 19].lower() == b"text/event-stream"
        return False

    def _start_stream(self) -> None:
        """The head of a streamed response arrived (and perhaps some of its body): hand them on."""
        exchange = self.exchange
        assert exchange is not None
        listener = exchange.start_streaming()
        lines, length = self._end_to_end()
        parts, self._body = self._body, []
        listener.upstream_stream(UpstreamResponse(self._parser.get_status_code(), self._reason, lines, length, b""),
                                 parts)

    def _stream_received(self, data: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.last_read = self._pool.loop.time()
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            self._flush_stream(exchange)
            if self.exchange is exchange:
                detail = str(exc) or type(exc).__name__
                self._fail(UpstreamFailure(PROTOCOL, f"invalid streamed response from upstream: {detail}"))
            return
        self._flush_stream(exchange)
        if self._complete and self.exchange is exchange:
            self.exchange = None
            exchange.connection = None
            if self._keep_alive and not self.closed:
                self.resume()
                self._pool.release(self)
            elif not self.closed:
                self.closed = True
                assert self.transport is not None
                self.transport.close()
            exchange.end_stream()

    def _flush_stream(self, exchange: UpstreamExchange) -> None:
        parts = self._body
        if parts and self.exchange is exchange:
            self._body = []
            cast(StreamListener, exchange.listener).upstream_data(parts)


class RestUpstreamPool:
    """Connections to one upstream `host:port`; up to `max_idle` idle ones are kept for reuse."""

    def __init__(self, host: str, port: int, *, max_idle: int, connect_timeout: float, response_timeout: float,
                 stream_idle_timeout: float | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.stream_idle_timeout = response_timeout if stream_idle_timeout is None else stream_idle_timeout
        self._loop = self.loop = loop or asyncio.get_running_loop()
        shortest = min(response_timeout, self.stream_idle_timeout)
        self.deadlines = Deadlines(self._loop, tick=min(0.05, max(0.001, shortest / 4)))
        self._idle: list[RestUpstreamConnection] = []
        self.connections: set[RestUpstreamConnection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.opened = 0
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def send(self, head: bytes, body: bytes, listener: Listener, *, head_only: bool = False,
             stream: bool = False) -> UpstreamExchange:
        """Send one request; `listener` hears of its answer. With `stream`, `listener` is a `StreamListener` and a
        streamed response is handed on as it arrives (module docstring)."""
        exchange = UpstreamExchange(self, head, body, head_only, listener, stream)
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.transport is not None and not connection.transport.is_closing():
                connection.send(exchange, reused=True)
                return exchange
        self.connect(exchange)
        return exchange

    def connect(self, exchange: UpstreamExchange) -> None:
        if self._closed:
            self._loop.call_soon(exchange.fail, UpstreamFailure(RESET, "the proxy is shutting down"))
            return
        task = self._loop.create_task(self._open(exchange))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open(self, exchange: UpstreamExchange) -> None:
        try:
            _, connection = await asyncio.wait_for(
                self._loop.create_connection(lambda: RestUpstreamConnection(self), self.host, self.port),
                self.connect_timeout)
        except TimeoutError:
            exchange.fail(UpstreamFailure(TIMEOUT, f"could not connect to the upstream within "
                                                   f"{self.connect_timeout:g}s"))
            return
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            exchange.fail(UpstreamFailure(REFUSED, f"cannot connect to the upstream at {self.host}:{self.port}: "
                                                   f"{reason}"))
            return
        except asyncio.CancelledError:
            exchange.fail(UpstreamFailure(RESET, "the proxy is shutting down"))
            raise
        self.opened += 1
        if exchange.done or self._closed:
            self.release(connection)
        else:
            connection.send(exchange, reused=False)

    def release(self, connection: RestUpstreamConnection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            connection.closed = True
            if connection.transport is not None:
                connection.transport.close()
            return
        self._idle.append(connection)

    def forget(self, connection: RestUpstreamConnection) -> None:
        self.connections.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)

    async def close(self) -> None:
        """Close every connection; exchanges still in flight fail with `reset`."""
        self._closed = True
        self.deadlines.close()
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        self._idle.clear()
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)
        await asyncio.sleep(0)
