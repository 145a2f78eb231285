"""Limits on REST clients: slow heads and bodies get 408, idle keep-alive connections close, and connections over
the cap get 503; each limit reached is counted in `RestProxy.limit_events`.

Timeouts are a fraction of a second here; the sweeper checks every quarter of the shortest one, so a deadline
fires between its timeout and its timeout plus two sweeps (bounds asserted below with slack for a busy machine).
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from prometheus_client import CollectorRegistry

from sidecar import config
from sidecar.proxy.rest.connection import LIMITS
from sidecar.proxy.rest.proxy import RestProxy
from sidecar.telemetry.metrics import LimitMetrics, RequestMetrics
from sidecar.telemetry.tracing import disabled
from tests.support.helpers import eventually, metric
from tests.support.rest_upstreams import (
    Answered,
    RawClient,
    Reply,
    ScriptedUpstream,
    json_reply,
    response,
    running_proxy,
)

SLOW_CLIENTS = 50
DRIP_SECONDS = 0.05


def post(body: bytes, *headers: str, target: str = "/v1/models/m:predict") -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: sidecar", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post_head(length: int, *headers: str) -> bytes:
    """The head of a predict POST whose body of `length` bytes is still to come."""
    lines = ["POST /v1/models/m:predict HTTP/1.1", "Host: sidecar", f"Content-Length: {length}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def get(target: str = "/v1/models/m") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: sidecar\r\n\r\n".encode()


def error_of(answer: Answered) -> str:
    assert answer.header("Content-Type") == "application/json"
    body = json.loads(answer.body)
    assert list(body) == ["error"]
    return str(body["error"])


async def drip(client: RawClient, data: bytes, every: float = DRIP_SECONDS) -> None:
    """Send `data` one byte at a time, `every` seconds apart, until it is all sent or the proxy closes."""
    for index in range(len(data)):
        try:
            await client.send(data[index:index + 1])
        except (ConnectionError, RuntimeError):  # closed by the proxy (a reset, or a transport already closing)
            return
        await asyncio.sleep(every)


async def slow_client(port: int, first: bytes, slowly: bytes) -> tuple[Answered, bool, float]:
    """Send `first` at once and `slowly` byte by byte; return the proxy's answer, whether it closed the connection
    afterwards, and the seconds from connecting until the answer."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with RawClient(port) as client:
        await client.send(first)
        sender = asyncio.ensure_future(drip(client, slowly))
        try:
            answer = await client.read_response(timeout=10)
            answered = loop.time() - started
            closed = await client.at_eof(timeout=5)
        finally:
            sender.cancel()
        return answer, closed, answered


# the header timeout ---------------------------------------------------------------------------------------------

async def test_slowloris_headers_sent_byte_by_byte_get_408_and_are_closed_by_the_header_timeout() -> None:
    head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: sidecar\r\nX-Slow: " + b"v" * 400 + b"\r\n\r\n"
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, head_timeout=0.5, rest_body_timeout=10.0) as proxy:
        slow = [asyncio.ensure_future(slow_client(proxy.port, b"", head)) for _ in range(SLOW_CLIENTS)]
        async with RawClient(proxy.port) as normal:  # served as usual meanwhile
            for _ in range(3):
                await normal.send(post(b"{}"))
                assert (await normal.read_response(timeout=2)).status == 200
                await asyncio.sleep(0.1)
        results = await asyncio.gather(*slow)
        for answer, closed, seconds in results:
            assert answer.status == 408
            assert error_of(answer) == "request header fields not received within 0.5s"
            assert answer.header("Connection") == "close" and answer.header("X-Prediction-Id")
            assert closed
            assert 0.5 <= seconds < 3.0
        assert proxy.limit_events["header_timeout"] == SLOW_CLIENTS
        assert [r.target for r in upstream.received] == ["/v1/models/m:predict"] * 3  # only the normal client's
        await eventually(lambda: not proxy.connections, timeout=5)


async def test_a_new_connection_that_sends_nothing_is_closed_quietly_after_the_header_timeout() -> None:
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, head_timeout=0.3, idle_timeout=30.0) as proxy, RawClient(proxy.port) as client:
        started = asyncio.get_running_loop().time()
        assert client.reader is not None
        assert await asyncio.wait_for(client.reader.read(), 5) == b""  # EOF, no answer: there was no request
        assert asyncio.get_running_loop().time() - started >= 0.29  # timed from the connect, just before `started`
        assert proxy.limit_events["header_timeout"] == 1


async def test_the_first_request_head_is_timed_from_connecting() -> None:
    """As nginx's client_header_timeout: waiting silently first does not buy a slow head more time."""
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, head_timeout=0.8) as proxy, \
            RawClient(proxy.port) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.7)
        await client.send(b"GET /v1/models/m HTTP/1.1\r\n")
        answer = await client.read_response(timeout=5)
        assert answer.status == 408
        assert loop.time() - started < 0.7 + 0.75  # timed from its first byte, it would be 0.7 + 0.8 at least
        assert proxy.limit_events["header_timeout"] == 1


async def test_a_later_request_head_is_timed_from_its_first_byte() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, head_timeout=0.4) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(get())
        assert (await client.read_response()).status == 200
        await asyncio.sleep(0.6)  # idle longer than the header timeout: fine, the idle timeout applies
        await client.send(b"GET /v1/models/m HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        await client.send(b"Host: sidecar\r\n\r\n")
        assert (await client.read_response()).status == 200
        assert proxy.limit_events["header_timeout"] == 0


async def test_the_head_clock_stops_while_the_proxy_stops_reading_pipelined_requests() -> None:
    """20 pipelined requests fill the queue (reading pauses at 16); the 21st's head, half read before the pause,
    is not timed out while the proxy itself is not reading."""
    async with ScriptedUpstream(lambda _: Reply(json_reply().data, delay=0.05)) as upstream, \
            running_proxy(upstream.port, head_timeout=0.3) as proxy, RawClient(proxy.port) as client:
        await client.send(get() * 20 + b"GET /v1/models/m HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        await client.send(b"Host: sidecar\r\n\r\n")
        answers = await client.read_responses(21, timeout=10)
        assert [a.status for a in answers] == [200] * 21
        assert proxy.limit_events["header_timeout"] == 0


# the body timeout -----------------------------------------------------------------------------------------------

async def test_slow_request_bodies_get_408_and_are_closed_by_the_body_timeout() -> None:
    body = b'{"instances": [' + b"1, " * 300 + b"1]}"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:400], body[400:])) + b"0\r\n\r\n"
    cases: list[tuple[bytes, bytes]] = []
    for index in range(SLOW_CLIENTS):
        if index % 2:
            cases.append((post_head(len(body)), body))
        else:
            head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: sidecar\r\nTransfer-Encoding: chunked\r\n\r\n"
            cases.append((head, chunked))
        if index % 5 == 0:  # these send a first part at once, then stall
            first, rest = cases[-1]
            cases[-1] = (first + rest[:10], b"")
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, head_timeout=10.0, rest_body_timeout=0.5) as proxy:
        results = await asyncio.gather(*(slow_client(proxy.port, first, slowly) for first, slowly in cases))
        for answer, closed, seconds in results:
            assert answer.status == 408
            assert error_of(answer) == "request body not received within 0.5s"
            assert answer.header("Connection") == "close"
            assert closed
            assert 0.5 <= seconds < 3.0
        assert proxy.limit_events["body_timeout"] == SLOW_CLIENTS
        assert proxy.limit_events["header_timeout"] == 0
        assert upstream.received == []
        await eventually(lambda: not proxy.connections, timeout=5)


async def test_a_body_that_arrives_in_time_in_pieces_is_forwarded() -> None:
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, rest_body_timeout=1.0) as proxy, RawClient(proxy.port) as client:
        await client.send(post_head(12))
        for part in (b"hello", b" ", b"world!"):
            await asyncio.sleep(0.15)
            await client.send(part)
        assert (await client.read_response()).status == 200
        assert upstream.received[0].body == b"hello world!"
        assert proxy.limit_events["body_timeout"] == 0


async def test_the_body_clock_waits_for_the_100_continue_the_proxy_owes() -> None:
    """A client waiting for `100 Continue` behind a slow pipelined request is not timed out; the clock starts when
    the proxy sends it."""
    async with ScriptedUpstream(lambda r: Reply(json_reply().data, delay=0.8 if r.target.endswith("slow") else 0)) \
            as upstream, running_proxy(upstream.port, head_timeout=0.3, rest_body_timeout=0.3) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(get("/v1/models/slow") + post_head(2, "Expect: 100-continue"))
        first, proceed = await client.read_responses(2, timeout=5)
        assert (first.status, proceed.status) == (200, 100)
        await client.send(b"{}")
        assert (await client.read_response()).status == 200
        assert proxy.limit_events["body_timeout"] == 0


# the idle timeout -----------------------------------------------------------------------------------------------

async def test_idle_keep_alive_connections_are_closed_quietly_by_the_idle_timeout() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, idle_timeout=0.3) as proxy:
        loop = asyncio.get_running_loop()

        async def idle_after_one_request() -> tuple[bytes, float]:
            async with RawClient(proxy.port) as client:
                await client.send(get())
                assert (await client.read_response()).status == 200
                answered = loop.time()
                assert client.reader is not None
                rest = await asyncio.wait_for(client.reader.read(), 5)
                return rest, loop.time() - answered

        async def busy() -> int:
            async with RawClient(proxy.port) as client:
                for _ in range(12):  # 1.2 s: four idle timeouts, never idle that long
                    await client.send(get())
                    assert (await client.read_response()).status == 200
                    await asyncio.sleep(0.1)
                return 12

        busy_client = asyncio.ensure_future(busy())
        idle = await asyncio.gather(*(idle_after_one_request() for _ in range(20)))
        served = await busy_client
        for rest, seconds in idle:
            assert rest == b""  # closed without a byte
            assert 0.28 <= seconds < 3.0  # timed from the answer, sent just before `answered`
        assert served == 12
        assert proxy.limit_events["idle_timeout"] == 20


async def test_a_keep_alive_connection_is_not_idle_while_its_request_is_answered() -> None:
    async with ScriptedUpstream(lambda _: Reply(json_reply().data, delay=0.6)) as upstream, \
            running_proxy(upstream.port, idle_timeout=0.2) as proxy, RawClient(proxy.port) as client:
        await client.send(get())
        assert (await client.read_response()).status == 200
        assert proxy.limit_events["idle_timeout"] == 0


# the send timeout -----------------------------------------------------------------------------------------------

BIG = 8 * 1024 * 1024  # more than loopback's socket buffers hold, so the rest waits in the proxy's own buffer


async def small_window_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def test_a_client_that_does_not_read_its_answer_is_aborted_by_the_send_timeout() -> None:
    big = Reply(response(200, b"x" * BIG, [("Content-Type", "application/octet-stream")]))
    async with ScriptedUpstream(lambda _: big) as upstream, \
            running_proxy(upstream.port, rest_send_timeout=0.5, idle_timeout=0.3) as proxy:
        _, writer = await small_window_client(proxy.port)
        try:
            writer.write(get())  # and never read: the idle timeout's close cannot finish either
            await eventually(lambda: proxy.limit_events["send_timeout"] == 1, timeout=10)
            await eventually(lambda: not proxy.connections, timeout=5)
        finally:
            writer.close()


async def test_a_slow_reader_that_keeps_reading_is_not_aborted() -> None:
    big = Reply(response(200, b"x" * BIG, [("Content-Type", "application/octet-stream")]))
    async with ScriptedUpstream(lambda _: big) as upstream, \
            running_proxy(upstream.port, rest_send_timeout=0.5) as proxy:
        reader, writer = await small_window_client(proxy.port)
        try:
            writer.write(get())
            received = 0
            async with asyncio.timeout(20):
                while received < BIG:
                    chunk = await reader.read(256 * 1024)
                    assert chunk, "closed before the whole answer"
                    received += len(chunk)
                    await asyncio.sleep(0.02)
            assert proxy.limit_events["send_timeout"] == 0
        finally:
            writer.close()


# the connection cap ---------------------------------------------------------------------------------------------

async def test_the_connection_over_the_cap_gets_503_while_the_others_keep_working() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, rest_max_connections=5) as proxy:
        clients = [RawClient(proxy.port) for _ in range(5)]
        for client in clients:
            await client.__aenter__()
            await client.send(get())
            assert (await client.read_response()).status == 200
        try:
            async with RawClient(proxy.port) as extra:
                await extra.send(post(b'{"instances": [1]}'))  # a request already sent is no reason for a reset
                refused = await extra.read_response(timeout=5)
                assert refused.status == 503
                assert json.loads(refused.body) == {"error": "too many connections"}
                assert refused.header("Connection") == "close"
                assert refused.header("Content-Type") == "application/json"
                assert await extra.at_eof()
            assert proxy.limit_events["max_connections"] == 1
            for client in clients:  # the five keep working
                await client.send(post(b"{}"))
                assert (await client.read_response()).status == 200
            assert len(upstream.received) == 10  # the refused request never reached the upstream
            await clients.pop().__aexit__()
            await eventually(lambda: len(proxy.connections) == 4, timeout=5)
            async with RawClient(proxy.port) as later:  # a freed place is taken again
                await later.send(get())
                assert (await later.read_response()).status == 200
        finally:
            for client in clients:
                await client.__aexit__()
        assert proxy.limit_events["max_connections"] == 1


async def test_slowloris_connections_filling_the_cap_are_timed_out_and_their_places_freed() -> None:
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, head_timeout=0.5, rest_max_connections=10) as proxy:
        slow = [asyncio.ensure_future(slow_client(proxy.port, b"GET / HTTP/1.1\r\n", b"X-Slow: " + b"v" * 200))
                for _ in range(10)]
        await eventually(lambda: len(proxy.connections) == 10, timeout=5)
        async with RawClient(proxy.port) as refused:
            assert (await refused.read_response(timeout=5)).status == 503
        assert [answer.status for answer, _, _ in await asyncio.gather(*slow)] == [408] * 10
        await eventually(lambda: not proxy.connections, timeout=5)
        async with RawClient(proxy.port) as client:
            await client.send(get())
            assert (await client.read_response()).status == 200
        assert (proxy.limit_events["header_timeout"], proxy.limit_events["max_connections"]) == (10, 1)


# settings and export --------------------------------------------------------------------------------------------

def test_the_limits_are_settings_with_defaults_flags_and_environment_variables() -> None:
    defaults = config.parse_args([], {}).proxy
    assert (defaults.rest_header_timeout, defaults.rest_body_timeout, defaults.rest_idle_timeout,
            defaults.rest_send_timeout, defaults.rest_max_connections) == (20.0, 60.0, 75.0, 60.0, 4096)
    settings = config.parse_args(["--rest-header-timeout", "250ms", "--rest-body-timeout", "2s",
                                  "--rest-idle-timeout", "1m"],
                                 {"SIDECAR_REST_MAX_CONNECTIONS": "7", "SIDECAR_REST_SEND_TIMEOUT": "30"}).proxy
    assert (settings.rest_header_timeout, settings.rest_body_timeout, settings.rest_idle_timeout,
            settings.rest_send_timeout, settings.rest_max_connections) == (0.25, 2.0, 60.0, 30.0, 7)
    proxy = RestProxy(settings, capture=None, metrics=RequestMetrics(), tracing=disabled())
    limits = proxy.limits
    assert (limits.header_timeout, limits.body_timeout, limits.idle_timeout, limits.send_timeout,
            limits.max_connections) == (0.25, 2.0, 60.0, 30.0, 7)
    assert limits.sweep_interval() == pytest.approx(0.0625)
    assert proxy.limit_events == dict.fromkeys(LIMITS, 0)
    with pytest.raises(config.ConfigError, match="SIDECAR_REST_MAX_CONNECTIONS: must be at least 1"):
        config.parse_args([], {"SIDECAR_REST_MAX_CONNECTIONS": "0"})
    with pytest.raises(config.ConfigError, match="--rest-body-timeout: expected a duration"):
        config.parse_args(["--rest-body-timeout", "soon"], {})


async def test_limit_events_export_as_a_counter_family_with_the_413_and_431_counted_too() -> None:
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, idle_timeout=0.2, max_body_bytes=10) as proxy:
        registry = CollectorRegistry()
        exported = LimitMetrics()
        exported.add("rest", proxy.limit_events)
        registry.register(exported)
        async with RawClient(proxy.port) as client:
            await client.send(get())
            await client.read_response()
            assert await client.at_eof()
        for request in (post(b"x" * 50), b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n"):
            async with RawClient(proxy.port) as client:
                await client.send(request)
                assert (await client.read_response()).status in (413, 431)
        assert metric(registry, "sidecar_limit_events_total", protocol="rest", limit="idle_timeout") == 1
        assert metric(registry, "sidecar_limit_events_total", protocol="rest", limit="body_too_large") == 1
        assert metric(registry, "sidecar_limit_events_total", protocol="rest", limit="header_too_large") == 1
        assert metric(registry, "sidecar_limit_events_total", protocol="rest", limit="max_connections") == 0


async def test_reaching_the_cap_is_logged_as_a_warning_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="sidecar.proxy.rest.proxy")

    def lines() -> list[str]:
        return [r.levelname + " " + r.getMessage() for r in caplog.records if "limits reached" in r.getMessage()]

    async def refuse() -> None:
        async with RawClient(proxy.port) as refused:
            assert (await refused.read_response()).status == 503

    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, head_timeout=1.0, rest_max_connections=1) as proxy, \
            RawClient(proxy.port) as holder:  # sweeps every 0.25 s
        await holder.send(get())
        await holder.read_response()
        await refuse()
        await eventually(lambda: bool(lines()), timeout=5)
        assert lines() == ["WARNING REST client limits reached: max_connections 1 (at most 1 connections are open "
                           "at once: rest_max_connections)"]
        await refuse()
        await asyncio.sleep(0.6)
        assert len(lines()) == 1  # the next line comes a minute later at the earliest
        assert proxy.limit_events["max_connections"] == 2
