"""The REST proxy forwards requests and answers unchanged except for hop-by-hop fields, framing and its id header."""

from __future__ import annotations

import asyncio
import gc
import re

import pytest

from sidecar.messages.records import CaptureRecord
from sidecar.proxy.rest.connection import IncomingRequest
from sidecar.proxy.rest.proxy import ProxyCall
from sidecar.proxy.rest.upstream import UpstreamExchange
from tests.support.rest_upstreams import (
    RawClient,
    Received,
    Reply,
    ScriptedUpstream,
    exchange,
    json_reply,
    response,
    running_proxy,
)

UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def post(target: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {target} HTTP/{version}", "Host: sidecar", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(target: str, *headers: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: sidecar", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_method_target_and_body_reach_the_upstream_and_its_answer_comes_back_byte_for_byte() -> None:
    answer = response(201, b'{"predictions": [[0.5]]}', [("Content-Type", "application/json"), ("X-Model", "m"),
                                                         ("Date", "Mon, 01 Jan 2024 00:00:00 GMT")],
                      reason="Created")
    async with ScriptedUpstream(lambda _: Reply(answer)) as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict?x=1&y=%20", b'{"instances": [1]}',
                                                 "Content-Type: application/json", "X-Custom: a,  b"))
        (seen,) = upstream.received
        assert (seen.method, seen.target, seen.body) == ("POST", "/v1/models/m:predict?x=1&y=%20",
                                                         b'{"instances": [1]}')
        assert seen.header("X-Custom") == "a,  b" and seen.header("Content-Type") == "application/json"
        assert (got.status, got.reason, got.body) == (201, "Created", b'{"predictions": [[0.5]]}')
        assert got.headers[:3] == [("Content-Type", "application/json"), ("X-Model", "m"),
                                   ("Date", "Mon, 01 Jan 2024 00:00:00 GMT")]
        assert got.header("Content-Length") == str(len(got.body))


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"])
async def test_every_method_is_forwarded(method: str) -> None:
    async with ScriptedUpstream(lambda r: Reply(response(200, b"" if r.method == "HEAD" else r.method.encode()))) \
            as upstream, running_proxy(upstream.port) as proxy, RawClient(proxy.port) as client:
        await client.send(get("/any/path", method=method))
        got = await client.read_response(head_only=method == "HEAD")
        assert upstream.received[0].method == method
        assert got.status == 200
        if method != "HEAD":
            assert got.body == method.encode()


async def test_hop_by_hop_request_fields_are_removed_and_end_to_end_ones_kept() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        await exchange(proxy.port, post("/v1/models/m:predict", b"{}", "Connection: keep-alive, X-Private",
                                        "X-Private: secret", "Keep-Alive: timeout=5", "Proxy-Authorization: Basic x",
                                        "Proxy-Connection: keep-alive", "TE: trailers", "Trailer: X-T",
                                        "Authorization: Bearer t", "Accept: */*", "X-Request-Id: r-1"))
        names = [name.lower() for name, _ in upstream.received[0].headers]
        for hop in ("connection", "x-private", "keep-alive", "proxy-authorization", "proxy-connection", "te",
                    "trailer"):
            assert hop not in names
        assert upstream.received[0].header("Authorization") == "Bearer t"
        assert upstream.received[0].header("Accept") == "*/*"
        assert upstream.received[0].header("X-Request-Id") == "r-1"


async def test_hop_by_hop_response_fields_are_removed_and_a_chunked_answer_is_reframed() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: X-Secret\r\nX-Secret: s\r\n"
           b"Keep-Alive: timeout=1\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n"
           b"X-Kept: yes\r\n\r\n3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\n\r\n")
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict", b"{}"))
        assert got.body == b'{"a": 1}'
        assert [name for name, _ in got.headers] == ["Content-Type", "X-Kept", "Content-Length", "X-Prediction-Id"]
        assert got.header("Content-Length") == "8"


async def test_a_chunked_upload_is_dechunked_and_sent_with_content_length() -> None:
    request = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4\r\n{\"in\r\n9\r\nstances\":\r\n4\r\n [1]\r\n1\r\n}\r\n0\r\n\r\n")
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, request)
        assert got.status == 200
        seen = upstream.received[0]
        assert seen.body == b'{"instances": [1]}'
        assert seen.header("Content-Length") == "18"
        assert seen.header("Transfer-Encoding") is None


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_body_on_get_or_head_is_read_but_never_forwarded(method: str) -> None:
    request = f"{method} /v1/models/m HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello".encode()
    async with ScriptedUpstream(lambda _: Reply(response(200, b""))) as upstream, \
            running_proxy(upstream.port) as proxy, RawClient(proxy.port) as client:
        await client.send(request + get("/v1/models/after"))
        await client.read_responses(1, head_only=method == "HEAD")
        await upstream.wait_for(lambda: len(upstream.received) >= 1)
        seen = upstream.received[0]
        assert seen.body == b"" and seen.header("Content-Length") is None
        if method == "GET":  # the body was consumed: the next request on the connection parses cleanly
            await client.read_responses(1)
            assert upstream.received[1].target == "/v1/models/after"


async def test_an_empty_post_is_sent_with_content_length_zero() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        await exchange(proxy.port, get("/v1/models/m:predict", method="POST"))
        assert upstream.received[0].header("Content-Length") == "0"


async def test_head_answer_keeps_the_upstream_content_length_and_has_no_body() -> None:
    raw = response(200, b"", [("Content-Type", "application/json"), ("Content-Length", "321")], length=False)
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream, running_proxy(upstream.port) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(get("/v1/models/m", method="HEAD"))
        got = await client.read_response(head_only=True)
        assert got.header("Content-Length") == "321"


async def test_not_modified_and_no_content_answers_keep_their_framing() -> None:
    answers = iter([response(304, b"", [("ETag", '"v1"'), ("Content-Length", "99")], length=False),
                    response(204, b"", length=False), json_reply().data])
    async with ScriptedUpstream(lambda _: Reply(next(answers))) as upstream, running_proxy(upstream.port) as proxy:
        not_modified, no_content, ok = await exchange(
            proxy.port, get("/a", 'If-None-Match: "v1"') + get("/b", method="DELETE") + get("/c"), count=3)
        assert (not_modified.status, not_modified.header("Content-Length"), not_modified.body) == (304, "99", b"")
        assert (no_content.status, no_content.header("Content-Length"), no_content.body) == (204, None, b"")
        assert ok.status == 200


def live(*types: type) -> int:
    """Objects of exactly these types the collector tracks (`type()` looks up no attribute: some libraries' lazy
    placeholders raise on any attribute access)."""
    return sum(1 for thing in gc.get_objects() if type(thing) in types)


async def test_answered_requests_are_freed_at_once_without_the_cycle_collector() -> None:
    """Per-request reference cycles made the collector run every ~50 requests, pausing the loop ~0.35 ms."""
    kept: list[CaptureRecord] = []
    answers = iter([Reply(action="reset"), *[json_reply()] * 20])
    async with ScriptedUpstream(lambda _: next(answers)) as upstream, \
            running_proxy(upstream.port, capture=kept.append) as proxy, RawClient(proxy.port) as client:
        gc.collect()
        gc.disable()
        try:
            for _ in range(21):  # the first fails upstream (502), the others are answered
                await client.send(post("/v1/models/m:predict", b'{"instances": [1]}'))
                await client.read_response()
            assert len(kept) == 20
            assert live(ProxyCall, IncomingRequest, UpstreamExchange) == 0
        finally:
            gc.enable()


async def test_keep_alive_clients_share_one_pooled_upstream_connection() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        for _ in range(3):
            async with RawClient(proxy.port) as client:
                for _ in range(3):
                    await client.send(post("/v1/models/m:predict", b"{}"))
                    assert (await client.read_response()).status == 200
        assert len(upstream.received) == 9
        assert upstream.connections == 1


async def test_pipelined_requests_are_answered_in_order_even_when_earlier_ones_are_slower() -> None:
    def answer(received: Received) -> Reply:
        delay = {"/slow": 0.2, "/medium": 0.1}.get(received.target, 0.0)
        return Reply(response(200, received.target.encode()), delay=delay)

    async with ScriptedUpstream(answer) as upstream, running_proxy(upstream.port) as proxy:
        answers = await exchange(proxy.port, get("/slow") + post("/medium", b"x" * 10) + get("/fast"), count=3)
        assert [a.body for a in answers] == [b"/slow", b"/medium", b"/fast"]


@pytest.mark.parametrize(("headers", "keeps_open", "connection_header"), [
    ((), False, "close"),
    (("Connection: keep-alive",), True, "keep-alive"),
])
async def test_http_1_0_clients_work_with_and_without_keep_alive(headers: tuple[str, ...], keeps_open: bool,
                                                                 connection_header: str) -> None:
    request = b"GET /v1/models/m HTTP/1.0\r\n" + "".join(f"{h}\r\n" for h in headers).encode() + b"\r\n"
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(request)
        got = await client.read_response()
        assert got.status == 200 and got.header("Connection") == connection_header
        assert upstream.received[0].header("Host") == f"127.0.0.1:{upstream.port}"  # added for the upstream
        if keeps_open:
            await client.send(request)
            assert (await client.read_response()).status == 200
        else:
            assert await client.at_eof()


async def test_connection_close_from_the_client_is_honoured_after_the_answer() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(get("/v1/models/m", "Connection: close"))
        got = await client.read_response()
        assert got.header("Connection") == "close"
        assert await client.at_eof()


async def test_expect_100_continue_is_answered_by_the_proxy_and_not_forwarded() -> None:
    async with ScriptedUpstream(lambda r: Reply(response(200, r.body))) as upstream, \
            running_proxy(upstream.port) as proxy, RawClient(proxy.port) as client:
        await client.send(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: s\r\nContent-Length: 7\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        interim = await client.read_response(head_only=True)
        assert interim.status == 100
        await client.send(b"payload")
        got = await client.read_response()
        assert (got.status, got.body) == (200, b"payload")
        assert upstream.received[0].header("Expect") is None


async def test_an_upgrade_request_is_served_as_a_plain_request_body_included() -> None:
    request = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 4\r\n\r\nbody")
    async with ScriptedUpstream(lambda r: Reply(response(200, r.body))) as upstream, \
            running_proxy(upstream.port) as proxy, RawClient(proxy.port) as client:
        await client.send(request + get("/v1/models/next"))
        first, second = await client.read_responses(2)
        assert (first.status, first.body, second.status) == (200, b"body", 200)
        seen = upstream.received[0]
        assert seen.header("Upgrade") is None and seen.header("HTTP2-Settings") is None
        assert upstream.received[1].target == "/v1/models/next"


async def test_absolute_form_targets_are_forwarded_in_origin_form() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        await exchange(proxy.port, get("http://model.example:8501/v1/models/m?x=1"))
        assert upstream.received[0].target == "/v1/models/m?x=1"


async def test_large_bodies_pass_through_both_ways() -> None:
    body = bytes(range(256)) * 20_000  # 5 MB
    async with ScriptedUpstream(lambda r: Reply(response(200, r.body[::-1]))) as upstream, \
            running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict", body))
        assert got.body == body[::-1]
        assert upstream.received[0].body == body


# prediction ids ---------------------------------------------------------------------------------------------

async def test_calls_that_make_no_prediction_are_answered_without_a_prediction_id() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        status, metadata, predict = await exchange(
            proxy.port, get("/v1/models/m") + get("/v1/models/m/metadata") + post("/v1/models/m:predict", b"{}"),
            count=3)
    assert status.header("X-Prediction-Id") is None and metadata.header("X-Prediction-Id") is None
    assert predict.header("X-Prediction-Id") is not None


async def test_every_answer_gets_a_fresh_prediction_id_that_the_upstream_sees_too() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        answers = await exchange(proxy.port, post("/v1/models/m:predict", b"{}") * 2, count=2)
        ids = [a.header("X-Prediction-Id") for a in answers]
        assert all(i is not None and UUID7.fullmatch(i) for i in ids)
        assert ids[0] != ids[1]
        assert [r.header("X-Prediction-Id") for r in upstream.received] == ids


@pytest.mark.parametrize(("headers", "expected"), [
    (("X-Prediction-Id: client-chosen-1",), "client-chosen-1"),
    (("X-Request-Id: req-7",), "req-7"),
    (("X-Request-Id: req-7", "X-Prediction-Id: pred-7"), "pred-7"),
    (("X-Prediction-Id: " + "x" * 129, "X-Request-Id: req-8"), "req-8"),
])
async def test_a_sane_client_id_is_honoured(headers: tuple[str, ...], expected: str) -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict", b"{}", *headers))
        assert got.header("X-Prediction-Id") == expected
        assert upstream.received[0].header("X-Prediction-Id") == expected


@pytest.mark.parametrize("bad", ["x" * 129, "caf\xe9", "\xff\xfe"])
async def test_an_overlong_or_non_printable_client_id_is_replaced(bad: str) -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port) as proxy:
        request = post("/v1/models/m:predict", b"{}").replace(b"\r\n\r\n", f"\r\nX-Prediction-Id: {bad}\r\n\r\n"
                                                                  .encode("latin-1"), 1)
        (got,) = await exchange(proxy.port, request)
        assert got.status == 200
        assert UUID7.fullmatch(got.header("X-Prediction-Id") or "")
        assert upstream.received[0].header("X-Prediction-Id") == got.header("X-Prediction-Id")


async def test_an_id_header_from_the_upstream_is_replaced_by_the_proxy_one() -> None:
    raw = response(200, b"{}", [("X-Prediction-Id", "upstream-made")])
    async with ScriptedUpstream(lambda _: Reply(raw)) as upstream, running_proxy(upstream.port) as proxy:
        (got,) = await exchange(proxy.port, post("/v1/models/m:predict", b"{}", "X-Prediction-Id: mine"))
        assert [v for k, v in got.headers if k.lower() == "x-prediction-id"] == ["mine"]


async def test_stop_lets_a_request_in_flight_finish_and_refuses_new_connections() -> None:
    async with ScriptedUpstream(lambda _: Reply(response(200, b"late"), delay=0.3)) as upstream, \
            running_proxy(upstream.port) as proxy, RawClient(proxy.port) as client:
        await client.send(get("/v1/models/m"))
        await upstream.wait_for(lambda: len(upstream.received) == 1)
        stopping = asyncio.ensure_future(proxy.stop())
        got = await client.read_response()
        assert (got.status, got.body, got.header("Connection")) == (200, b"late", "close")
        await stopping
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, idle_timeout=0.2) as proxy, \
            RawClient(proxy.port) as idle, RawClient(proxy.port) as busy:
        await idle.send(get("/v1/models/m"))
        await idle.read_response()
        await busy.send(b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Length: 12\r\n\r\npart")  # mid-request
        assert await idle.at_eof(timeout=3)
        await busy.send(b"ial body")
        assert (await busy.read_response()).status == 200
