"""When the upstream or the client misbehaves, the client gets a clear `{"error": ...}` answer, never a hang."""

from __future__ import annotations

import asyncio
import json

import pytest

from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.metrics import RequestMetrics
from tests.support.helpers import free_port
from tests.support.rest_upstreams import Answered, RawClient, Reply, ScriptedUpstream, exchange, running_proxy


def post(target: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: sidecar", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


PREDICT = post("/v1/models/m:predict", b'{"instances": [1]}')


def error_of(answer: Answered) -> str:
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("X-Prediction-Id")
    body = json.loads(answer.body)
    assert list(body) == ["error"]
    return str(body["error"])


def health(ready: bool) -> UpstreamHealth:
    async def probe() -> bool:
        return ready

    checker = UpstreamHealth({"rest": probe}, interval=60)
    checker.state["rest"] = ready
    return checker


async def test_refused_upstream_gives_502_and_marks_the_upstream_down() -> None:
    metrics = RequestMetrics()
    checker = health(True)
    async with running_proxy(free_port(), metrics=metrics, health=checker) as proxy, RawClient(proxy.port) as client:
        await client.send(PREDICT)
        got = await client.read_response()
        assert got.status == 502
        assert "cannot connect to the upstream" in error_of(got)
        assert checker.state["rest"] is False
        await client.send(PREDICT)  # the connection stays usable; now the upstream is known to be down
        again = await client.read_response()
        assert again.status == 503
    assert metrics.upstream_errors == {("rest", "refused"): 2}
    assert metrics.requests[("m", "", "rest", "predict", "502")] == 1
    assert metrics.requests[("m", "", "rest", "predict", "503")] == 1


async def test_an_upstream_known_not_ready_gives_503() -> None:
    async with running_proxy(free_port(), health=health(False)) as proxy:
        (got,) = await exchange(proxy.port, PREDICT)
        assert got.status == 503 and "cannot connect" in error_of(got)


async def test_success_marks_the_upstream_up() -> None:
    checker = health(False)
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, health=checker) as proxy:
        (got,) = await exchange(proxy.port, PREDICT)
        assert got.status == 200
        assert checker.ready


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(action="reset"), "reset"),
    (Reply(action="close"), "reset"),
    (Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ntruncated", action="close"), "reset"),
    (Reply(b"not http at all\r\n\r\n"), "protocol"),
])
async def test_a_broken_upstream_answer_gives_502(reply: Reply, reason: str) -> None:
    metrics = RequestMetrics()
    async with ScriptedUpstream(lambda _: reply) as upstream, running_proxy(upstream.port, metrics=metrics) as proxy:
        (got,) = await exchange(proxy.port, PREDICT)
        assert got.status == 502
        assert "upstream" in error_of(got)
    assert metrics.upstream_errors == {("rest", reason): 1}


async def test_a_slow_upstream_gives_504_after_the_timeout_and_its_connection_is_closed() -> None:
    metrics = RequestMetrics()
    async with ScriptedUpstream(lambda _: Reply(action="hang")) as upstream, \
            running_proxy(upstream.port, metrics=metrics, upstream_timeout=0.3) as proxy:
        started = asyncio.get_running_loop().time()
        (got,) = await exchange(proxy.port, PREDICT)
        assert got.status == 504
        assert "did not answer within 0.3s" in error_of(got)
        assert asyncio.get_running_loop().time() - started >= 0.3
        await upstream.wait_for(lambda: upstream.closed == [1])
        assert proxy.pool.idle == 0
    assert metrics.upstream_errors == {("rest", "timeout"): 1}


async def test_a_client_that_disconnects_cancels_its_upstream_call() -> None:
    metrics = RequestMetrics()
    async with ScriptedUpstream(lambda _: Reply(action="hang")) as upstream, \
            running_proxy(upstream.port, metrics=metrics) as proxy:
        async with RawClient(proxy.port) as client:
            await client.send(PREDICT)
            await upstream.wait_for(lambda: len(upstream.received) == 1)
        await upstream.wait_for(lambda: upstream.closed == [1])  # the upstream saw its connection close
        assert proxy.pool.idle == 0
        assert not proxy.connections
    assert metrics.requests[("m", "", "rest", "predict", "499")] == 1


async def test_other_requests_keep_working_while_the_upstream_fails_for_one() -> None:
    async with ScriptedUpstream(lambda r: Reply(action="reset") if "bad" in r.target else Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as upstream, running_proxy(upstream.port) as proxy:
        results = await asyncio.gather(*(exchange(proxy.port, post(f"/v1/models/{name}:predict", b"{}"))
                                         for name in ["good", "bad", "good", "bad", "good"]))
        assert [r[0].status for r in results] == [200, 502, 200, 502, 200]


# bad requests -----------------------------------------------------------------------------------------------

async def test_a_body_over_the_limit_by_content_length_gets_413_without_reaching_the_upstream() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, max_body_bytes=1000) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(post("/v1/models/m:predict", b"x" * 5000))
        got = await client.read_response()
        assert got.status == 413
        assert "exceeds the limit of 1000 bytes" in error_of(got)
        assert got.header("Connection") == "close"
        assert await client.at_eof()
        assert upstream.received == []


async def test_a_chunked_body_growing_over_the_limit_gets_413() -> None:
    chunk = b"x" * 600
    request = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
               + (b"258\r\n" + chunk + b"\r\n") * 5 + b"0\r\n\r\n")
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, max_body_bytes=1000) as proxy:
        (got,) = await exchange(proxy.port, request)
        assert got.status == 413 and "exceeds the limit" in error_of(got)
        assert upstream.received == []


async def test_expect_100_continue_with_a_body_over_the_limit_gets_413_instead_of_100() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, max_body_bytes=1000) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: s\r\nContent-Length: 100000\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        got = await client.read_response()
        assert got.status == 413
        assert await client.at_eof()


async def test_the_413_answer_waits_for_earlier_pipelined_answers() -> None:
    async with ScriptedUpstream(lambda _: Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", delay=0.1)) \
            as upstream, running_proxy(upstream.port, max_body_bytes=100) as proxy:
        first, second = await exchange(proxy.port, post("/v1/models/m:predict", b"{}")
                                       + post("/v1/models/m:predict", b"y" * 500), count=2)
        assert (first.status, second.status) == (200, 413)


@pytest.mark.parametrize("request_bytes", [
    b"this is not http\r\n\r\n",
    b"GET /v1/models/m HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /v1/models/m HTTP/1.1\r\nX-Id: a\x01b\r\n\r\n",
    b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /v1/models/m:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_malformed_http_gets_400_and_the_connection_closes(request_bytes: bytes) -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(request_bytes)
        got = await client.read_response()
        assert got.status == 400 and "malformed HTTP request" in error_of(got)
        assert await client.at_eof()
        assert upstream.received == []


async def test_header_fields_over_64_kib_get_431() -> None:
    huge = "X-Big: " + "v" * 70_000
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict", b"{}", huge))
        assert got.status == 431 and "exceed" in error_of(got)


async def test_a_header_field_that_never_ends_gets_431_before_it_fills_memory() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(b"POST /v1/models/m:predict HTTP/1.1\r\nX-Endless: ")
        for _ in range(12):  # 192 KiB of one field value, never finished
            await client.send(b"v" * 16384)
            await asyncio.sleep(0.01)
        got = await client.read_response()
        assert got.status == 431
        assert await client.at_eof()


async def test_a_transfer_coding_other_than_chunked_gets_501() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, b"POST /v1/models/m:predict HTTP/1.1\r\n"
                                            b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        assert got.status == 501 and "gzip, chunked" in error_of(got)
        assert upstream.received == []


async def test_header_fields_that_arrive_too_slowly_get_408() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, head_timeout=0.2) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: s\r\n")  # and nothing more
        got = await client.read_response(timeout=5)
        assert got.status == 408 and "not received within 0.2s" in error_of(got)
        assert await client.at_eof()
        assert upstream.received == []


async def test_the_proxy_own_answer_to_head_has_no_body_and_the_connection_stays_in_step() -> None:
    async with running_proxy(free_port()) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"HEAD /v1/models/m HTTP/1.1\r\nHost: s\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 502 ") and b"Content-Length: " in head  # the size a GET would get
            writer.write(b"GET /v1/models/m HTTP/1.1\r\nHost: s\r\n\r\n")
            following = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert following.startswith(b"HTTP/1.1 502 ")  # no body bytes of the HEAD answer in between
        finally:
            writer.close()


async def test_connect_is_refused_with_405() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert got.status == 405 and "CONNECT" in error_of(got)
        assert upstream.received == []


async def test_a_capture_callable_that_raises_does_not_break_the_answer() -> None:
    def broken(_: object) -> None:
        raise RuntimeError("ring exploded")

    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, capture=broken) as proxy:
        (got,) = await exchange(proxy.port, PREDICT)
        assert got.status == 200
