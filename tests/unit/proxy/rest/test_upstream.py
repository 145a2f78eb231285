"""The upstream pool: keep-alive reuse, response framing, and how each kind of upstream failure is reported."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from sidecar.proxy.rest.upstream import (
    PROTOCOL,
    REFUSED,
    RESET,
    TIMEOUT,
    RestUpstreamPool,
    UpstreamFailure,
    UpstreamResponse,
)
from tests.support.helpers import free_port
from tests.support.rest_upstreams import (
    LAST_CHUNK,
    Reply,
    ScriptedUpstream,
    chunk,
    json_reply,
    response,
    stream_reply,
)


class Outcome:
    """A listener that remembers what the pool told it."""

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()

    def upstream_response(self, answer: UpstreamResponse) -> None:
        self.done.set_result(answer)

    def upstream_failed(self, failure: UpstreamFailure) -> None:
        self.done.set_result(failure)


def request(target: str = "/v1/models/m:predict", body: bytes = b"{}", method: str = "POST") -> tuple[bytes, bytes]:
    head = f"{method} {target} HTTP/1.1\r\nHost: upstream\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return head, body


def make_pool(port: int, max_idle: int = 4, connect_timeout: float = 2.0,
              response_timeout: float = 5.0) -> RestUpstreamPool:
    return RestUpstreamPool("127.0.0.1", port, max_idle=max_idle, connect_timeout=connect_timeout,
                        response_timeout=response_timeout)


async def send(pool: RestUpstreamPool, target: str = "/v1/models/m:predict", body: bytes = b"{}",
               method: str = "POST", head_only: bool = False) -> UpstreamResponse | UpstreamFailure:
    outcome = Outcome()
    head, payload = request(target, body, method)
    pool.send(head, payload, outcome, head_only=head_only)
    result: UpstreamResponse | UpstreamFailure = await asyncio.wait_for(outcome.done, 10)
    return result


async def test_sequential_requests_reuse_one_keep_alive_connection() -> None:
    async with ScriptedUpstream() as upstream:
        pool = make_pool(upstream.port)
        for _ in range(5):
            answer = await send(pool)
            assert isinstance(answer, UpstreamResponse) and answer.status == 200
        assert upstream.connections == 1
        assert pool.opened == 1 and pool.idle == 1
        await pool.close()


async def test_concurrent_requests_open_connections_and_keep_at_most_max_idle() -> None:
    async with ScriptedUpstream(lambda _: Reply(response(200, b"ok"), delay=0.1)) as upstream:
        pool = make_pool(upstream.port, max_idle=2)
        answers = await asyncio.gather(*(send(pool) for _ in range(5)))
        assert all(isinstance(a, UpstreamResponse) and a.body == b"ok" for a in answers)
        assert upstream.connections == 5
        assert pool.idle == 2
        await upstream.wait_for(lambda: len(upstream.closed) == 3)
        await pool.close()


async def test_response_carries_status_reason_end_to_end_lines_and_body() -> None:
    raw = response(201, b'{"a": 1}', [("Content-Type", "application/json"), ("X-Model", "m"),
                                      ("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5")],
                   reason="Created Fine")
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool)
        assert isinstance(answer, UpstreamResponse)
        assert (answer.status, answer.reason, answer.body) == (201, b"Created Fine", b'{"a": 1}')
        assert answer.header_lines == [b"Content-Type: application/json\r\n", b"X-Model: m\r\n",
                                       b"Content-Length: 8\r\n"]
        assert answer.content_length == b"8"
        await pool.close()


async def test_chunked_response_is_dechunked_and_its_trailers_dropped() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool)
        assert isinstance(answer, UpstreamResponse)
        assert answer.body == b"hello world"
        assert answer.header_lines == [b"Content-Type: text/plain\r\n"]
        assert answer.content_length is None
        assert pool.idle == 1  # a chunked response keeps the connection usable
        await pool.close()


async def test_response_framed_by_connection_close_is_complete_at_the_end_and_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    async with ScriptedUpstream(lambda _: Reply(raw, action="close")) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool)
        assert isinstance(answer, UpstreamResponse) and answer.body == b"until the end"
        assert pool.idle == 0
        await pool.close()


async def test_connection_close_from_upstream_is_honoured() -> None:
    raw = response(200, b"ok", [("Connection", "close")])
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream:
        pool = make_pool(upstream.port)
        assert isinstance(await send(pool), UpstreamResponse)
        assert isinstance(await send(pool), UpstreamResponse)
        assert upstream.connections == 2 and pool.idle == 0
        await pool.close()


async def test_interim_100_continue_is_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"final")
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool)
        assert isinstance(answer, UpstreamResponse) and (answer.status, answer.body) == (200, b"final")
        await pool.close()


async def test_head_response_completes_without_a_body_and_closes_its_connection() -> None:
    raw = response(200, b"", [("Content-Length", "1234")], length=False)
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool, method="HEAD", body=b"", head_only=True)
        assert isinstance(answer, UpstreamResponse)
        assert answer.body == b"" and answer.content_length == b"1234"
        await upstream.wait_for(lambda: upstream.closed == [1])
        await pool.close()


async def test_refused_connection_fails_with_refused() -> None:
    pool = make_pool(free_port())
    failure = await send(pool)
    assert isinstance(failure, UpstreamFailure) and failure.reason == REFUSED
    assert "cannot connect" in failure.detail
    await pool.close()


async def test_reset_before_answering_fails_with_reset() -> None:
    async with ScriptedUpstream(lambda _: Reply(action="reset")) as upstream:
        pool = make_pool(upstream.port)
        failure = await send(pool)
        assert isinstance(failure, UpstreamFailure) and failure.reason == RESET
        await pool.close()


async def test_close_in_the_middle_of_a_body_fails_with_reset() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    async with ScriptedUpstream(lambda _: Reply(raw, action="close")) as upstream:
        pool = make_pool(upstream.port)
        failure = await send(pool)
        assert isinstance(failure, UpstreamFailure) and failure.reason == RESET
        await pool.close()


async def test_garbage_instead_of_http_fails_with_protocol_and_closes() -> None:
    async with ScriptedUpstream(lambda _: Reply(b"SSH-2.0-OpenSSH\r\n\r\n")) as upstream:
        pool = make_pool(upstream.port)
        failure = await send(pool)
        assert isinstance(failure, UpstreamFailure) and failure.reason == PROTOCOL
        await upstream.wait_for(lambda: upstream.closed == [1])
        await pool.close()


async def test_a_transfer_coding_other_than_chunked_fails_with_protocol() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream:
        pool = make_pool(upstream.port)
        failure = await send(pool)
        assert isinstance(failure, UpstreamFailure) and failure.reason == PROTOCOL
        assert "unsupported transfer coding 'gzip, chunked'" in failure.detail
        await pool.close()


async def test_slow_answer_times_out_and_its_connection_is_closed_not_pooled() -> None:
    async with ScriptedUpstream(lambda _: Reply(action="hang")) as upstream:
        pool = make_pool(upstream.port, response_timeout=0.2)
        failure = await send(pool)
        assert isinstance(failure, UpstreamFailure) and failure.reason == TIMEOUT
        assert "0.2s" in failure.detail
        await upstream.wait_for(lambda: upstream.closed == [1])
        assert pool.idle == 0
        await pool.close()


async def test_cancel_closes_the_connection_and_reports_nothing() -> None:
    async with ScriptedUpstream(lambda _: Reply(action="hang")) as upstream:
        pool = make_pool(upstream.port)
        outcome = Outcome()
        exchange = pool.send(*request(), outcome)
        await upstream.wait_for(lambda: len(upstream.received) == 1)
        exchange.cancel()
        await upstream.wait_for(lambda: upstream.closed == [1])
        await asyncio.sleep(0.05)
        assert not outcome.done.done()
        assert pool.idle == 0
        await pool.close()


async def test_idle_connection_closed_by_upstream_is_retried_once_on_a_fresh_one() -> None:
    def answer(received: object) -> Reply:
        count = len(upstream.received)
        return Reply(action="close") if count == 2 else json_reply()

    async with ScriptedUpstream(answer) as upstream:
        pool = make_pool(upstream.port)
        assert isinstance(await send(pool), UpstreamResponse)
        answer_two = await send(pool)  # its pooled connection closes without a byte: retried on connection 2
        assert isinstance(answer_two, UpstreamResponse) and answer_two.status == 200
        assert [r.connection for r in upstream.received] == [1, 1, 2]
        await pool.close()


async def test_a_fresh_connection_that_closes_is_not_retried() -> None:
    async with ScriptedUpstream(lambda _: Reply(action="close")) as upstream:
        pool = make_pool(upstream.port)
        failure = await send(pool)
        assert isinstance(failure, UpstreamFailure) and failure.reason == RESET
        assert len(upstream.received) == 1
        await pool.close()


async def test_connect_timeout_fails_with_timeout() -> None:
    # A listening socket whose backlog is full never completes the handshake for further clients.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(server.getsockname())
                fillers.append(filler)
            pool = make_pool(server.getsockname()[1], connect_timeout=0.2)
            failure = await send(pool)
            assert isinstance(failure, UpstreamFailure) and failure.reason == TIMEOUT
            await pool.close()
        finally:
            for filler in fillers:
                filler.close()


async def test_closing_the_pool_fails_requests_in_flight_and_closes_connections() -> None:
    async with ScriptedUpstream(lambda _: Reply(action="hang")) as upstream:
        pool = make_pool(upstream.port)
        outcome = Outcome()
        pool.send(*request(), outcome)
        await upstream.wait_for(lambda: len(upstream.received) == 1)
        await pool.close()
        failure = await asyncio.wait_for(outcome.done, 5)
        assert isinstance(failure, UpstreamFailure) and failure.reason == RESET
        await upstream.wait_for(lambda: upstream.closed == [1])
        assert isinstance(await send(pool), UpstreamFailure)


@pytest.mark.parametrize("size", [0, 1, 70_000, 3 * 1024 * 1024])
async def test_bodies_of_any_size_arrive_whole(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with ScriptedUpstream(lambda r: Reply(response(200, r.body))) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool, body=body)
        assert isinstance(answer, UpstreamResponse) and answer.body == body
        assert upstream.received[0].body == body
        await pool.close()


# streaming (send(..., stream=True)) --------------------------------------------------------------------------

class StreamOutcome(Outcome):
    """A stream listener that logs what the pool told it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, object]] = []

    def upstream_stream(self, head: UpstreamResponse, parts: list[bytes]) -> None:
        self.events.append(("head", head))
        if parts:
            self.events.append(("data", list(parts)))

    def upstream_data(self, parts: list[bytes]) -> None:
        self.events.append(("data", list(parts)))

    def upstream_stream_end(self, failure: UpstreamFailure | None) -> None:
        self.events.append(("end", failure))
        self.done.set_result(failure)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_streamed_answer_is_handed_on_chunk_by_chunk_and_its_connection_pooled_at_the_end() -> None:
    reply = stream_reply(CHUNKED_HEAD, [chunk(b"one"), chunk(b"two") + chunk(b"three"), LAST_CHUNK], 0.1)
    async with ScriptedUpstream(lambda _: reply) as upstream:
        pool = make_pool(upstream.port, response_timeout=0.15)  # shorter than the stream: no longer applies
        outcome = StreamOutcome()
        pool.send(*request(), outcome, stream=True)
        assert await asyncio.wait_for(outcome.done, 5) is None
        (kind, head), *rest = outcome.events
        assert kind == "head" and isinstance(head, UpstreamResponse)
        assert (head.status, head.header_lines, head.content_length, head.body) == (
            200, [b"Content-Type: text/event-stream\r\n"], None, b"")
        assert rest == [("data", [b"one"]), ("data", [b"two", b"three"]), ("end", None)]
        assert pool.idle == 1
        await pool.close()


async def test_a_stream_that_stalls_ends_after_the_idle_timeout_and_is_not_pooled() -> None:
    reply = stream_reply(CHUNKED_HEAD, [chunk(b"a"), chunk(b"b"), chunk(b"c")], 0.15)  # then silence
    async with ScriptedUpstream(lambda _: reply) as upstream:
        pool = RestUpstreamPool("127.0.0.1", upstream.port, max_idle=4, connect_timeout=2.0, response_timeout=5.0,
                                stream_idle_timeout=0.3)
        outcome = StreamOutcome()
        pool.send(*request(), outcome, stream=True)
        failure = await asyncio.wait_for(outcome.done, 5)
        assert isinstance(failure, UpstreamFailure) and failure.reason == TIMEOUT
        assert "nothing for 0.3s" in failure.detail
        assert [kind for kind, _ in outcome.events] == ["head", "data", "data", "data", "end"]
        await upstream.wait_for(lambda: upstream.closed == [1])
        assert pool.idle == 0
        await pool.close()


async def test_without_stream_a_chunked_answer_is_still_held_whole() -> None:
    reply = stream_reply(CHUNKED_HEAD, [chunk(b"one"), chunk(b"two"), LAST_CHUNK], 0.05)
    async with ScriptedUpstream(lambda _: reply) as upstream:
        pool = make_pool(upstream.port)
        answer = await send(pool)
        assert isinstance(answer, UpstreamResponse) and answer.body == b"onetwo"
        await pool.close()
