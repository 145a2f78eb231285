"""Streamed REST answers (chunked, server-sent events, framed by the upstream closing) pass through as they arrive.

The scripted upstream stamps each piece it writes (`ScriptedUpstream.sent`, perf_counter); the client below stamps
each body piece it reads. "Live" is asserted as an order: piece i reached the client before piece i + 1 was sent,
not as wall-clock bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from time import perf_counter

import httptools
import pytest

from sidecar.messages.records import CaptureRecord
from sidecar.proxy.rest.proxy import ProxyCall
from sidecar.proxy.rest.upstream import UpstreamExchange
from sidecar.telemetry.metrics import RequestMetrics
from tests.support.helpers import eventually
from tests.support.rest_upstreams import (
    LAST_CHUNK,
    RawClient,
    Received,
    Reply,
    ScriptedUpstream,
    chunk,
    json_reply,
    running_proxy,
    stream_reply,
)

EVERY = 0.3  # seconds between two streamed pieces
EVENTS = [f'data: {{"model_name": "m", "text_output": "token {i}"}}\n\n'.encode() for i in range(5)]
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nX-Model: m\r\n\r\n")
SSE_FIELDS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Model", "m")]
GENERATE = b"POST /v2/models/m/generate_stream HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 2\r\n\r\n{}"
PREDICT = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 2\r\n\r\n{}"


class StreamClient:
    """A client that reads one streamed response piece by piece: its head, each body piece with the time it came,
    whether the response ended whole, and every raw byte received."""

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.port = port
        self.receive_buffer = receive_buffer  # SO_RCVBUF, to keep the kernel from buffering much for us
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.raw = bytearray()
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.pieces: list[tuple[float, bytes]] = []
        self.complete = False
        self.eof = False
        self.raw_body_start = 0

    async def __aenter__(self) -> StreamClient:
        if self.receive_buffer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            return self
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.writer is not None
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def request(self, data: bytes) -> None:
        """Send a request; what is read next belongs to its response."""
        assert self.writer is not None
        self._reset()
        self.raw.clear()
        self.writer.write(data)
        await self.writer.drain()

    @property
    def body(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    async def read_until(self, condition: object, timeout: float = 10.0) -> None:
        """Read until `condition()` holds, the response is complete, or the connection ends."""
        assert self.reader is not None and callable(condition)
        async with asyncio.timeout(timeout):
            while not condition() and not self.complete and not self.eof:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.eof = True
                    return
                self.raw += data
                self._parser.feed_data(data)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True
        self.raw_body_start = self.raw.find(b"\r\n\r\n") + 4

    def on_body(self, body: bytes) -> None:
        self.pieces.append((perf_counter(), body))

    def on_message_complete(self) -> None:
        self.complete = True


def assert_live(client: StreamClient, upstream: ScriptedUpstream, pieces: list[bytes]) -> None:
    """Each piece reached the client after the upstream wrote it and before the upstream wrote the next one."""
    arrived: list[float] = []
    got = b""
    for when, data in client.pieces:
        got += data
        while len(arrived) < len(pieces) and len(got) >= sum(map(len, pieces[:len(arrived) + 1])):
            arrived.append(when)
    sent = [when for when, _ in upstream.sent]
    assert len(arrived) == len(pieces) == len(sent)
    for index in range(len(pieces)):
        assert arrived[index] >= sent[index]
        if index + 1 < len(pieces):
            assert arrived[index] < sent[index + 1], f"piece {index} arrived after piece {index + 1} was sent"


async def read_stream(client: StreamClient, pieces: list[bytes]) -> None:
    total = sum(map(len, pieces))
    await client.read_until(lambda: client.head_done)
    await client.read_until(lambda: len(client.body) >= total and client.complete)


# live pass-through -------------------------------------------------------------------------------------------

async def test_server_sent_events_arrive_one_by_one_as_sent_and_outlive_the_upstream_timeout() -> None:
    """The stream lasts 1.2 s: longer than the upstream timeout and the stream idle timeout, which only bounds the
    gaps between events (0.3 s)."""
    reply = stream_reply(SSE_HEAD, [chunk(event) for event in EVENTS] + [LAST_CHUNK], EVERY)
    reply.then[-1] = (0.0, LAST_CHUNK)  # the end follows the last event at once
    metrics = RequestMetrics()
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, upstream_timeout=0.5, rest_stream_idle_timeout=0.6, metrics=metrics) \
            as proxy, \
            StreamClient(proxy.port) as client:
        await client.request(GENERATE)
        await read_stream(client, EVENTS)
        assert client.status == 200 and client.complete and not client.eof
        upstream.sent.pop()  # the last chunk: no body piece of its own
        assert_live(client, upstream, EVENTS)
        assert upstream.sent[-1][0] - upstream.sent[0][0] > 0.5 + EVERY  # longer than the upstream timeout
        assert client.body == b"".join(EVENTS)
        # the same fields the upstream sent, in its order, plus the prediction id; the chunked framing kept
        assert [f for f in client.headers if f[0] not in ("Transfer-Encoding", "X-Prediction-Id")] == SSE_FIELDS
        assert client.header("Transfer-Encoding") == "chunked"
        assert client.header("X-Prediction-Id") is None  # generate_stream is not captured: no id to join feedback to
        # one chunk per upstream chunk: the chunk bytes are the upstream's own
        assert bytes(client.raw[client.raw_body_start:]) == b"".join(chunk(e) for e in EVENTS) + LAST_CHUNK
        assert proxy.limit_events["stream_idle_timeout"] == 0
    assert metrics.requests[("", "", "rest", "other", "200")] == 1
    assert not metrics.upstream_errors


@pytest.mark.parametrize("framing", ["chunked", "close", "length"])
async def test_every_framing_streams_live_and_the_body_is_unchanged(framing: str) -> None:
    """Chunked NDJSON; an answer framed by the upstream closing (re-chunked for an HTTP/1.1 client); server-sent
    events with a Content-Length (kept). The gaps (0.3 s) are longer than the upstream timeout (0.2 s), which only
    bounds the wait for the head."""
    lines = [b'{"token": %d}\n' % i for i in range(4)]
    if framing == "chunked":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        reply = stream_reply(head, [chunk(line) for line in lines], EVERY)
        reply.then.append((0.0, LAST_CHUNK))
    elif framing == "close":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        reply = stream_reply(head, lines, EVERY, after="close")
    else:
        length = sum(map(len, lines))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % length
        reply = stream_reply(head, lines, EVERY)
    async with ScriptedUpstream(lambda r: reply if "stream" in r.target else json_reply()) as upstream, \
            running_proxy(upstream.port, upstream_timeout=0.2) as proxy, StreamClient(proxy.port) as client:
        await client.request(GENERATE)
        await read_stream(client, lines)
        assert client.status == 200 and client.complete
        if framing == "chunked":
            upstream.sent.pop()
        assert_live(client, upstream, lines)
        assert client.body == b"".join(lines)
        if framing == "length":
            assert client.header("Content-Length") == str(len(client.body))
            assert client.header("Transfer-Encoding") is None
        else:
            assert client.header("Transfer-Encoding") == "chunked" and client.header("Content-Length") is None
        # the client connection stays open for the next request (the upstream's closes if it framed by closing)
        await client.request(PREDICT.replace(b"m:predict", b"m"))
        await client.read_until(lambda: False)
        assert client.complete and client.status == 200
        assert upstream.connections == (2 if framing == "close" else 1)


async def test_an_http_1_0_client_gets_the_stream_framed_by_the_connection_closing() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = stream_reply(head, [chunk(e) for e in EVENTS[:3]] + [LAST_CHUNK], EVERY)
    reply.then[-1] = (0.0, LAST_CHUNK)
    async with ScriptedUpstream(lambda _: reply) as upstream, running_proxy(upstream.port) as proxy, \
            StreamClient(proxy.port) as client:
        await client.request(GENERATE.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"Host: sidecar\r\n",
                                                                               b"Connection: keep-alive\r\n"))
        await client.read_until(lambda: False)
        assert client.eof  # the end of the body
        assert client.header("Connection") == "close" and client.header("Transfer-Encoding") is None
        upstream.sent.pop()
        assert_live(client, upstream, EVENTS[:3])
        assert client.body == b"".join(EVENTS[:3])
        assert proxy.pool.idle == 1  # the upstream's chunked answer ended cleanly: its connection is pooled


async def test_a_chunked_answer_whole_in_one_read_keeps_the_content_length_fast_path() -> None:
    raw = SSE_HEAD + chunk(EVENTS[0]) + LAST_CHUNK
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream, running_proxy(upstream.port) as proxy, \
            StreamClient(proxy.port) as client:
        await client.request(GENERATE)
        await client.read_until(lambda: False)
        assert client.complete and client.body == EVENTS[0]
        assert client.header("Content-Length") == str(len(EVENTS[0]))
        assert client.header("Transfer-Encoding") is None


# timeouts and failures ----------------------------------------------------------------------------------------

async def test_a_stalled_stream_ends_after_the_stream_idle_timeout_with_the_connection_closed() -> None:
    metrics = RequestMetrics()
    records: list[CaptureRecord] = []
    reply = stream_reply(SSE_HEAD, [chunk(EVENTS[0]), chunk(EVENTS[1])], 0.1)  # then nothing, the connection open
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, metrics=metrics, capture=records.append, upstream_timeout=5.0,
                          rest_stream_idle_timeout=0.4) as proxy, \
            StreamClient(proxy.port) as client:
        await client.request(PREDICT)
        await client.read_until(lambda: len(client.body) == len(EVENTS[0] + EVENTS[1]))
        stalled_at = upstream.sent[-1][0]
        await client.read_until(lambda: False)
        ended_at = perf_counter()
        assert client.eof and not client.complete  # closed without the last chunk: the client knows it was cut
        assert client.body == EVENTS[0] + EVENTS[1]
        assert 0.4 <= ended_at - stalled_at < 0.4 + 2.0
        assert proxy.limit_events["stream_idle_timeout"] == 1
        await upstream.wait_for(lambda: upstream.closed == [1])  # the upstream connection was closed
        assert proxy.pool.idle == 0
        await eventually(lambda: not proxy.connections, timeout=5)
    assert metrics.upstream_errors == {("rest", "timeout"): 1}
    (record,) = records
    assert record.response == EVENTS[0] + EVENTS[1] and record.response_truncated


async def test_a_stream_the_upstream_breaks_off_ends_with_the_client_connection_closed() -> None:
    metrics = RequestMetrics()
    reply = stream_reply(SSE_HEAD, [chunk(EVENTS[0])], 0.1, after="reset")
    async with ScriptedUpstream(lambda _: reply) as upstream, running_proxy(upstream.port, metrics=metrics) as proxy, \
            StreamClient(proxy.port) as client:
        await client.request(GENERATE)
        await client.read_until(lambda: False)
        assert client.eof and not client.complete and client.body == EVENTS[0]
        assert proxy.limit_events["stream_idle_timeout"] == 0
    assert metrics.upstream_errors == {("rest", "reset"): 1}


async def test_the_upstream_timeout_still_bounds_the_wait_for_the_head() -> None:
    reply = Reply(SSE_HEAD, delay=1.0)
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, upstream_timeout=0.3, rest_stream_idle_timeout=5.0) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(GENERATE)
        got = await client.read_response()
        assert got.status == 504


# capture ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bound", "truncated"), [(1024**2, False), (100, True), (0, True)])
async def test_a_captured_stream_keeps_its_bytes_up_to_the_bound_and_says_truncated_beyond(
        bound: int, truncated: bool) -> None:
    records: list[CaptureRecord] = []
    body = b"".join(EVENTS)
    reply = stream_reply(SSE_HEAD, [chunk(e) for e in EVENTS] + [LAST_CHUNK], 0.02)
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, capture=records.append, rest_stream_capture_bytes=bound) as proxy, \
            StreamClient(proxy.port) as client:
        await client.request(PREDICT)
        await read_stream(client, EVENTS)
        assert client.body == body  # the client gets everything whatever the bound
        await eventually(lambda: len(records) == 1, timeout=5)
    (record,) = records
    assert record.response == body[:bound]
    assert record.response_truncated is truncated
    assert (record.model, record.method, record.status, record.request) == ("m", "predict", 200, b"{}")
    assert record.prediction_id == client.header("X-Prediction-Id")


# the client side ----------------------------------------------------------------------------------------------

async def test_a_client_that_disconnects_mid_stream_frees_the_upstream_connection() -> None:
    metrics = RequestMetrics()
    records: list[CaptureRecord] = []
    reply = stream_reply(SSE_HEAD, [chunk(EVENTS[i % 5]) for i in range(100)], 0.05)
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, metrics=metrics, capture=records.append) as proxy:
        async with StreamClient(proxy.port) as client:
            await client.request(PREDICT)
            await client.read_until(lambda: len(client.body) >= len(EVENTS[0]))
        await upstream.wait_for(lambda: upstream.closed == [1])  # closed by the proxy, long before the end
        assert len(upstream.sent) < 50
        assert proxy.pool.idle == 0 and not proxy.pool.connections
        await eventually(lambda: not proxy.connections, timeout=5)
        gc.collect()
        assert sum(type(o) in (ProxyCall, UpstreamExchange) for o in gc.get_objects()) == 0
    assert metrics.requests[("m", "", "rest", "predict", "499")] == 1
    (record,) = records
    assert record.response_truncated and record.response.startswith(EVENTS[0])


async def test_a_client_that_does_not_read_stops_the_proxy_reading_the_upstream() -> None:
    """Back-pressure: above rest_stream_buffer_bytes queued to the client, the upstream is no longer read (what the
    proxy has read stops growing, far short of what the upstream sent, and the proxy holds little of it); all of it
    arrives once the client reads."""
    block = bytes(range(256)) * 4096  # 1 MiB
    blocks = 24
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = stream_reply(head, [chunk(block) for _ in range(blocks)] + [LAST_CHUNK], 0.0)
    mark = 64 * 1024
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, rest_stream_buffer_bytes=mark, rest_stream_idle_timeout=0.2) as proxy, \
            StreamClient(proxy.port, receive_buffer=64 * 1024) as client:
        assert client.writer is not None
        client.writer.transport.pause_reading()  # the client reads nothing for now
        await client.request(PREDICT)
        await upstream.wait_for(lambda: len(upstream.sent) == blocks + 1)
        (connection,) = proxy.connections
        call = connection.active.state if connection.active is not None else None
        assert isinstance(call, ProxyCall)

        def read_by_proxy() -> int:
            assert call.stream is not None
            return call.stream.size

        await eventually(lambda: proxy.limit_events["stream_write_buffer"] >= 1, timeout=5)
        before = read_by_proxy()
        await asyncio.sleep(0.5)  # longer than the stream idle timeout: a paused stream is not idle
        assert read_by_proxy() == before < len(block) * blocks // 2  # paused, well short of the end
        assert connection.transport is not None
        assert connection.transport.get_write_buffer_size() <= mark + 2 * 256 * 1024 + 4096  # one read over the mark
        client.writer.transport.resume_reading()
        await client.read_until(lambda: False, timeout=30)
        assert client.complete and client.body == block * blocks
        assert proxy.pool.idle == 1  # ended cleanly: reading resumed and the connection pooled again
        assert proxy.limit_events["stream_idle_timeout"] == 0


async def test_a_client_that_never_reads_a_stream_loses_it_after_the_send_timeout_and_frees_the_upstream() -> None:
    block = b"x" * 1024**2
    reply = stream_reply(SSE_HEAD, [chunk(block) for _ in range(64)], 0.01)
    async with ScriptedUpstream(lambda _: reply) as upstream, \
            running_proxy(upstream.port, rest_send_timeout=0.3) as proxy, \
            StreamClient(proxy.port, receive_buffer=64 * 1024) as client:
        assert client.writer is not None
        client.writer.transport.pause_reading()
        await client.request(GENERATE)
        await upstream.wait_for(lambda: upstream.closed == [1], timeout=10)
        assert proxy.limit_events["send_timeout"] == 1
        assert proxy.pool.idle == 0
        await eventually(lambda: not proxy.connections, timeout=5)


async def test_pipelined_requests_behind_a_stream_are_answered_after_it_in_order() -> None:
    def answer(received: Received) -> Reply:
        if "generate_stream" in received.target:
            reply = stream_reply(SSE_HEAD, [chunk(e) for e in EVENTS[:2]] + [LAST_CHUNK], 0.1)
            return reply
        return json_reply()

    async with ScriptedUpstream(answer) as upstream, running_proxy(upstream.port) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(GENERATE + PREDICT)
        first, second = await client.read_responses(2)
        assert first.body == EVENTS[0] + EVENTS[1] and first.header("Transfer-Encoding") == "chunked"
        assert second.status == 200 and second.body == b'{"predictions": [1]}'
        assert upstream.connections == 1
