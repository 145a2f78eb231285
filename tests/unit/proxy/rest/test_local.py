"""Local routes: paths the sidecar answers itself on the REST listener, never forwarded to the model server."""

from __future__ import annotations

import json

from sidecar.proxy.rest.local import LocalRequest, LocalResponse
from sidecar.telemetry.metrics import RequestMetrics
from tests.support.rest_upstreams import RawClient, ScriptedUpstream, exchange, running_proxy


async def test_a_local_route_gets_the_whole_request_and_its_answer_goes_back_framed() -> None:
    seen: list[LocalRequest] = []

    async def feedback(request: LocalRequest) -> LocalResponse:
        seen.append(request)
        return LocalResponse(202, {"Content-Type": "application/json", "X-Accepted": "1"}, b'{"accepted": 1}')

    request = (b"POST /v1/feedback?dry=1 HTTP/1.1\r\nHost: s\r\nContent-Type: application/json\r\n"
               b"X-Thing: a\r\nx-thing: b\r\nContent-Length: 13\r\n\r\n{\"truth\": 1}\n")
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, local_routes={"/v1/feedback": feedback}) as proxy:
        (got,) = await exchange(proxy.port, request)
        assert upstream.received == []
    assert (got.status, got.body) == (202, b'{"accepted": 1}')
    assert got.headers == [("Content-Type", "application/json"), ("X-Accepted", "1"), ("Content-Length", "15")]
    (local,) = seen
    assert (local.method, local.path, local.query, local.body) == ("POST", "/v1/feedback", "dry=1", b'{"truth": 1}\n')
    assert local.headers["content-type"] == "application/json"
    assert local.headers["x-thing"] == "a, b"


async def test_other_paths_still_reach_the_upstream() -> None:
    async def never(request: LocalRequest) -> LocalResponse:
        raise AssertionError("not this one")

    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, local_routes={"/v1/feedback": never}) as proxy:
        (got,) = await exchange(proxy.port, b"POST /v1/feedback/more HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert got.status == 200 and upstream.received[0].target == "/v1/feedback/more"


async def test_a_failing_handler_gives_500_internal_error_and_the_connection_keeps_working() -> None:
    async def broken(request: LocalRequest) -> LocalResponse:
        raise ValueError("secret detail that must not leak")

    async def fine(request: LocalRequest) -> LocalResponse:
        return LocalResponse.json(200, {"ok": True})

    metrics = RequestMetrics()
    async with ScriptedUpstream() as upstream, \
            running_proxy(upstream.port, local_routes={"/broken": broken, "/fine": fine}, metrics=metrics) as proxy, \
            RawClient(proxy.port) as client:
        await client.send(b"GET /broken HTTP/1.1\r\n\r\nGET /fine HTTP/1.1\r\n\r\n")
        failed, ok = await client.read_responses(2)
    assert failed.status == 500
    assert failed.header("Content-Type") == "application/json"
    assert json.loads(failed.body) == {"error": "internal error"}
    assert (ok.status, json.loads(ok.body)) == (200, {"ok": True})
    assert metrics.requests == {}  # local answers are not proxied traffic


async def test_a_header_value_with_a_line_break_is_a_handler_error_not_an_injection() -> None:
    async def sneaky(request: LocalRequest) -> LocalResponse:
        return LocalResponse(200, {"X-Evil": "a\r\nSet-Cookie: x=1"}, b"")

    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, local_routes={"/s": sneaky}) as proxy:
        (got,) = await exchange(proxy.port, b"GET /s HTTP/1.1\r\n\r\n")
    assert got.status == 500 and got.header("Set-Cookie") is None


async def test_local_answers_are_ordered_with_proxied_ones_on_a_pipelined_connection() -> None:
    async def local(request: LocalRequest) -> LocalResponse:
        return LocalResponse(200, {}, b"local")

    async with ScriptedUpstream() as upstream, running_proxy(upstream.port, local_routes={"/local": local}) as proxy:
        answers = await exchange(proxy.port, b"GET /v1/models/m HTTP/1.1\r\n\r\nGET /local HTTP/1.1\r\n\r\n"
                                             b"GET /v1/models/m HTTP/1.1\r\n\r\n", count=3)
    assert [a.body for a in answers] == [b'{"predictions": [1]}', b"local", b'{"predictions": [1]}']
