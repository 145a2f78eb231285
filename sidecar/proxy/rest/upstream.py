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


class UpstreamExchange:
    """One request in flight; `cancel()` drops it and closes its connection."""

    __slots__ = ("_pool", "body", "connection", "deadline", "done", "head", "head_only", "listener", "retried")

    def __init__(self, pool: RestUpstreamPool, head: bytes, body: bytes, head_only: bool, listener: Listener) -> None:
        self._pool = pool
        self.head = head
        self.body = body
        self.head_only = head_only
        self.listener = listener
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
            self.listener.upstream_failed(failure)

    def expired(self) -> None:
        self.fail(UpstreamFailure(TIMEOUT, f"upstream did not answer within {self._pool.response_timeout:g}s"))

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
        self._received = True
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            detail = self._invalid or str(exc) or type(exc).__name__
            self._fail(UpstreamFailure(PROTOCOL, f"invalid HTTP response from upstream: {detail}"))
            return
        if self._complete:
            self._deliver(keep_alive=self._keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        exchange = self.exchange
        if exchange is None:
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
        if exchange is not None and exchange.head_only and status >= 200:
            self._complete = True  # no body follows; the connection is not reused (the parser expects one)

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

    def _fail(self, failure: UpstreamFailure) -> None:
        exchange = self.exchange
        self.abandon()
        if exchange is not None:
            exchange.connection = None
            exchange.fail(failure)

    def _deliver(self, keep_alive: bool) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.exchange = None
        exchange.connection = None
        lines = self._lines
        length = self._length
        if self._nominated or (self._chunked and length is not None):
            drop = (self._nominated or set()) | ({b"content-length"} if self._chunked else set())
            lines = [line for line, lower in zip(lines, self._names, strict=True) if lower not in drop]
            length = None if self._chunked else length
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


class RestUpstreamPool:
    """Connections to one upstream `host:port`; up to `max_idle` idle ones are kept for reuse."""

    def __init__(self, host: str, port: int, *, max_idle: int, connect_timeout: float, response_timeout: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self._loop = loop or asyncio.get_running_loop()
        self.deadlines = Deadlines(self._loop, tick=min(0.05, max(0.001, response_timeout / 4)))
        self._idle: list[RestUpstreamConnection] = []
        self.connections: set[RestUpstreamConnection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.opened = 0
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def send(self, head: bytes, body: bytes, listener: Listener, *, head_only: bool = False) -> UpstreamExchange:
        exchange = UpstreamExchange(self, head, body, head_only, listener)
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
