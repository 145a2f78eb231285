"""Loopback HTTP/1.1 peers for the REST proxy tests: a scripted upstream server and a raw-bytes client.

Both are real TCP endpoints parsing with httptools, so a test sees exactly the bytes the proxy put on the wire.
The upstream's answer to each request is chosen by the test (`Reply`): bytes to write (optionally after a delay),
a stream (a head, then pieces written at set intervals, each stamped when sent), or a misbehaviour: reset the
connection, close it, or never answer. It records every request it received and every connection it saw close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import httptools

from sidecar.messages.records import CaptureRecord
from sidecar.proxy.rest.local import LocalHandler
from sidecar.proxy.rest.proxy import RestProxy
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing, disabled


@dataclass
class Received:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # which upstream connection (1, 2, ...) carried it

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class Reply:
    data: bytes = b""
    delay: float = 0.0
    action: str = "write"  # write | reset | close | hang | stream
    # stream: `data` (the head, perhaps with the first body bytes) at once, then each (seconds after the previous
    # write, bytes) of `then`, each stamped in `ScriptedUpstream.sent`; afterwards `after`: keep (the connection
    # stays open, nothing more is sent), close, or reset.
    then: list[tuple[float, bytes]] = field(default_factory=list)
    after: str = "keep"


def stream_reply(head: bytes, pieces: list[bytes], every: float, after: str = "keep", first: float = 0.0) -> Reply:
    """A streamed answer: `head` at once, the first piece `first` seconds later, the others `every` seconds apart."""
    return Reply(head, action="stream", then=[(first if index == 0 else every, piece)
                                              for index, piece in enumerate(pieces)], after=after)


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of the chunked transfer coding."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def response(status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             reason: str = "OK", length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in (headers or [])]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_reply(body: bytes = b'{"predictions": [1]}', status: int = 200) -> Reply:
    return Reply(response(status, body, [("Content-Type", "application/json")]))


Answer = Callable[[Received], Reply]


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self, server: ScriptedUpstream, number: int) -> None:
        self.server = server
        self.number = number
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._begin()

    def _begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.peers.append(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.closed.append(self.number)
        self.server.changed.set()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        received = Received(self.parser.get_method().decode(), self.url.decode("latin-1"),
                            self.parser.get_http_version(), self.headers, b"".join(self.body), self.number)
        self._begin()
        self.server.received.append(received)
        self.server.changed.set()
        reply = self.server.answer(received)
        if reply.delay:
            asyncio.get_running_loop().call_later(reply.delay, self._act, reply)
        else:
            self._act(reply)

    def _act(self, reply: Reply) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if reply.action == "write":
            transport.write(reply.data)
        elif reply.action == "reset":
            transport.abort()
        elif reply.action == "close":
            if reply.data:
                transport.write(reply.data)
            transport.close()
        elif reply.action == "stream":
            transport.write(reply.data)
            task = asyncio.get_running_loop().create_task(self._stream(transport, reply))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)

    async def _stream(self, transport: asyncio.Transport, reply: Reply) -> None:
        for delay, data in reply.then:
            if delay:
                await asyncio.sleep(delay)
            if transport.is_closing():
                return
            transport.write(data)
            self.server.sent.append((perf_counter(), data))
            self.server.changed.set()
        if reply.after == "close":
            transport.close()
        elif reply.after == "reset":
            transport.abort()


class ScriptedUpstream:
    """`async with ScriptedUpstream(answer) as upstream:` listens on a free loopback port."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or (lambda _: json_reply())
        self.received: list[Received] = []
        self.closed: list[int] = []
        self.sent: list[tuple[float, bytes]] = []  # streamed pieces: (time.perf_counter() when written, bytes)
        self.peers: list[_UpstreamConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def _connection(self) -> _UpstreamConnection:
        self.connections += 1
        return _UpstreamConnection(self, self.connections)

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `condition()` holds (checked whenever a request arrives or a connection closes)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Answered:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


class RawClient:
    """A client that writes exact bytes and parses whatever responses come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._answers: list[Answered] = []
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._begin()

    def _begin(self) -> None:
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def read_responses(self, count: int = 1, timeout: float = 10.0, head_only: bool = False) -> list[Answered]:
        """Read until `count` whole responses arrived (or, with `head_only`, their heads)."""
        assert self.reader is not None
        self._head_only = head_only
        async with asyncio.timeout(timeout):
            while len(self._answers) < count:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed after {len(self._answers)} of {count} responses")
                self._parser.feed_data(data)
        answers, self._answers = self._answers[:count], self._answers[count:]
        return answers

    async def read_response(self, timeout: float = 10.0, head_only: bool = False) -> Answered:
        return (await self.read_responses(1, timeout, head_only))[0]

    async def at_eof(self, timeout: float = 5.0) -> bool:
        """True when the proxy closed the connection (anything still arriving is read and dropped)."""
        assert self.reader is not None
        async with asyncio.timeout(timeout):
            try:
                while await self.reader.read(65536):
                    pass
            except ConnectionResetError:
                pass
        return True

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._head_only:
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._head_only:
            self._finish()

    def _finish(self) -> None:
        self._answers.append(Answered(self._parser.get_status_code(), self._reason.decode(),
                                      self._parser.get_http_version(), self._headers, b"".join(self._body)))
        self._begin()


async def exchange(port: int, request: bytes, count: int = 1) -> list[Answered]:
    """Open a connection, send `request` bytes, read `count` responses, close."""
    async with RawClient(port) as client:
        await client.send(request)
        return await client.read_responses(count)


@contextlib.asynccontextmanager
async def running_proxy(upstream_port: int, *, capture: Callable[[CaptureRecord], None] | None = None,
                        metrics: RequestMetrics | None = None, tracing: Tracing | None = None,
                        health: UpstreamHealth | None = None, local_routes: Mapping[str, LocalHandler] | None = None,
                        host: str = "127.0.0.1", idle_timeout: float | None = None,
                        head_timeout: float | None = None, **settings: Any) -> AsyncIterator[RestProxy]:
    """A started RestProxy on a free loopback port forwarding to `host:upstream_port`; stopped on exit.
    `idle_timeout` and `head_timeout` set `rest_idle_timeout` and `rest_header_timeout`; other settings by name."""
    if idle_timeout is not None:
        settings["rest_idle_timeout"] = idle_timeout
    if head_timeout is not None:
        settings["rest_header_timeout"] = head_timeout
    proxy = RestProxy(ProxySettings(upstream_rest=(host, upstream_port), listen_rest=("127.0.0.1", 0), **settings),
                      capture=capture, metrics=metrics or RequestMetrics(), tracing=tracing or disabled(),
                      health=health, local_routes=local_routes)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
