"""5,000 seeded, fuzzed HTTP/1.1 requests against the REST proxy in front of a scripted upstream.

The requests mix random methods, targets and versions, header names and values with odd bytes, broken chunked
encoding, conflicting Content-Length/Transfer-Encoding, oversized heads, truncated messages and random byte
mutations. What must hold for every one: the proxy answers (or closes) within a bound, never with a 5xx of its
own other than an upstream error (502/503/504) or the 501 RFC 9112 section 6.1 asks for an unknown transfer coding;
nothing is logged with a traceback; no connection is left open; and afterwards a valid predict request is answered
byte for byte as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sidecar.proxy.rest.local import LocalRequest, LocalResponse
from tests.support.helpers import eventually
from tests.support.rest_upstreams import Received, Reply, ScriptedUpstream, json_reply, running_proxy

SEED = 20_240_601
CASES = 5_000
CONCURRENCY = 32
ANSWER_BOUND = 5.0  # seconds a case may take; the proxy's header and body timeouts are 0.3 s here
UPSTREAM_ERRORS = frozenset({502, 503, 504})

METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE", b"SEARCH", b"PROPFIND"]
ODD_METHODS = [b"CONNECT", b"PRI", b"get", b"Post", b"FOO", b"", b"G ET", b"POST\t", b"\xffGET", b"GE\x00T", b"MKCOL"]
TARGETS = [b"/v1/models/m:predict", b"/v1/models/m/versions/2:classify", b"/v1/models/m/labels/canary:regress",
           b"/v1/models/m", b"/v1/models/m/metadata", b"/v2/models/m/infer", b"/v2/models/m/versions/1/infer",
           b"/v2/health/ready", b"/v1/feedback", b"/v1/feedback?x=1", b"/", b"*", b"//", b"/v1/models/:predict",
           b"http://example.com/v1/models/m:predict", b"HTTPS://h:1/v1/models/m?x", b"http://h", b"/%zz%00",
           b"/v1/models/m:predict?q=%ff", b"/v1/models/" + b"m" * 300 + b":predict", b"/v1/models/m:predict#frag"]
ODD_TARGETS = [b"", b"/a b", b"/\x7f", b"/\xc3\xa9t\xc3\xa9", b"/\xff\xfe", b"/v1/models/m:predict?r=\x01", b"/\t/",
               b"?only=query", b"/\x00"]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0"]
ODD_VERSIONS = [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/1", b"HTTP/11", b"http/1.1", b"XTTP/1.1",
                b"HTTP/1.1 extra", b""]
NAMES = [b"Content-Type", b"Accept", b"User-Agent", b"X-Prediction-Id", b"X-Request-Id", b"traceparent",
         b"tracestate", b"Connection", b"Keep-Alive", b"Upgrade", b"Expect", b"Proxy-Authorization", b"TE", b"Trailer",
         b"Content-Encoding", b"Sidecar-Log", b"Cookie", b"X-Forwarded-For", b"Via", b"Date", b"If-None-Match"]
VALUES = {b"Connection": [b"close", b"keep-alive", b"Upgrade", b"X-Drop, close", b"te, trailer", b"", b"\xff"],
          b"Expect": [b"100-continue", b"100-Continue", b"200-ok", b""],
          b"Upgrade": [b"websocket", b"h2c", b"HTTP/2.0"],
          b"X-Prediction-Id": [b"mine-1", b"x" * 200, b"caf\xe9", b"", b"a b"],
          b"Content-Encoding": [b"gzip", b"identity", b"br, gzip"],
          b"traceparent": [b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"garbage"]}
CODINGS = [b"chunked", b"Chunked", b" chunked ", b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity",
           b"chunked, chunked", b"x-custom", b"", b"chunked\x00"]
ODD_BYTES = [b"\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\t", b" ", b":", b"\r", b"\n", b"\"", b"\\", b"(", b"@"]


def token(rng: random.Random, size: int) -> bytes:
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~")
                 for _ in range(size))


def odd(rng: random.Random, text: bytes) -> bytes:
    """`text` with one to three odd bytes put in at random places."""
    out = bytearray(text)
    for _ in range(rng.randint(1, 3)):
        out[rng.randint(0, len(out)):rng.randint(0, len(out))] = rng.choice(ODD_BYTES)
    return bytes(out)


def header_name(rng: random.Random) -> bytes:
    return rng.choice(NAMES) if rng.random() < 0.7 else b"X-" + token(rng, rng.randint(1, 20))


def header_value(rng: random.Random, name: bytes) -> bytes:
    if name in VALUES and rng.random() < 0.7:
        return rng.choice(VALUES[name])
    if rng.random() < 0.9:
        return token(rng, rng.randint(0, 40))
    return bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 20)))  # obs-text, allowed in values


def chunked(rng: random.Random, body: bytes, broken: bool) -> bytes:
    """A chunked body, sometimes with extensions and trailers; `broken` breaks it one way or another."""
    out = bytearray()
    rest = body
    while rest:
        size = rng.randint(1, max(1, len(rest)))
        part, rest = rest[:size], rest[size:]
        extension = b";name=value" if rng.random() < 0.1 else b""
        out += b"%x%s\r\n%s\r\n" % (len(part), extension, part)
    out += b"0\r\n"
    if rng.random() < 0.1:
        out += b"X-Trailer: yes\r\n"
    out += b"\r\n"
    if broken:
        breakers: list[Callable[[bytes], bytes]] = [
            lambda b: b.replace(b"\r\n", b"\n", 1), lambda b: b"zz\r\n" + b, lambda b: b"-1\r\nx\r\n" + b,
            lambda b: b"ffffffffffffffffff\r\n" + b, lambda b: b[:-5], lambda b: b"5\r\nabc\r\n" + b,
            lambda b: b"3 \r\nabc\r\n" + b, lambda b: b"3\r\nabcXY" + b, lambda b: b.replace(b"0\r\n", b"")]
        return rng.choice(breakers)(bytes(out))
    return bytes(out)


@dataclass
class Case:
    data: bytes
    head_only: bool  # a HEAD request: its answer has no body whatever its Content-Length says


FAULTS = ["method", "target", "version", "name", "value", "separator", "short", "long", "bad-length", "two-lengths",
          "broken-chunks", "coding", "conflict", "unframed-body", "oversized", "truncated", "mutated", "bare-lf"]


def fuzzed_request(rng: random.Random) -> Case:
    """A well-formed request built from random parts, with no fault (about a third) or one to three faults."""
    faults = set(rng.sample(FAULTS, rng.choices([0, 1, 2, 3], [6, 8, 3, 1])[0]))
    method = rng.choice(ODD_METHODS) if "method" in faults else rng.choice(METHODS)
    target = rng.choice(TARGETS)
    if "target" in faults:
        target = rng.choice(ODD_TARGETS) if rng.random() < 0.5 else odd(rng, target)
    version = rng.choice(ODD_VERSIONS) if "version" in faults else rng.choice(VERSIONS)
    head = [method + b" " + target + b" " + version]
    if rng.random() < 0.9:
        head.append(b"Host: " + rng.choice([b"sidecar", b"h:8501", b"", b"sidecar, other"]))
    for _ in range(rng.choices([0, 1, 3, 8, 40], [3, 4, 3, 2, 1])[0]):
        name = header_name(rng)
        head.append(name + rng.choice([b": ", b":", b":\t", b":  "]) + header_value(rng, name))
    if "name" in faults:
        head.insert(rng.randint(1, len(head)), odd(rng, token(rng, rng.randint(0, 12))) + b": v")
    if "value" in faults:
        head.insert(rng.randint(1, len(head)), b"X-Odd: " + odd(rng, token(rng, rng.randint(0, 30))))
    if "separator" in faults:
        head.insert(rng.randint(1, len(head)), rng.choice([b"X-Sep : v", b"X-Sep  :v", b"X-Sep v", b" X-Folded: v",
                                                          b"\tfolded", b":no-name"]))
    body = rng.choice([b"", b'{"instances": [1, 2, 3]}', b'{"inputs": [{"name": "x"}]}', bytes(range(256)),
                       b"x" * rng.randint(0, 3000)])
    if method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE") and rng.random() < 0.7:
        body = b""
    framing = [b"Content-Length: %d" % len(body)]
    if rng.random() < 0.25 and "unframed-body" not in faults:
        framing = [b"Transfer-Encoding: chunked"]
        body = chunked(rng, body, broken=False)
    elif not body and rng.random() < 0.5:
        framing = []
    if "short" in faults:
        framing = [b"Content-Length: %d" % max(0, len(body) - rng.randint(1, 20))]
    if "long" in faults:  # the body never completes
        framing = [b"Content-Length: %d" % (len(body) + rng.randint(1, 500))]
    if "bad-length" in faults:
        framing = [b"Content-Length: " + rng.choice([b"-1", b"abc", b"1e3", b"+5", b"0x10", b"", b" 5 5",
                                                     b"99999999999999999999999", b"5,5", b"\xff"])]
    if "two-lengths" in faults:
        framing = [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + rng.choice([0, 1]))]
    if "broken-chunks" in faults:
        framing = [b"Transfer-Encoding: chunked"]
        body = chunked(rng, body, broken=True)
    if "coding" in faults:
        framing = [b"Transfer-Encoding: " + rng.choice(CODINGS)]
        body = chunked(rng, body, broken=False) if rng.random() < 0.5 else body
    if "conflict" in faults:
        framing = [b"Content-Length: %d" % len(body), b"Transfer-Encoding: " + rng.choice(CODINGS)]
        rng.shuffle(framing)
        body = chunked(rng, body, broken=False) if rng.random() < 0.5 else body
    if "unframed-body" in faults:  # a body with no framing: read as the start of the next request
        framing = []
        body = body or b"garbage"
    for line in framing:
        head.insert(rng.randint(1, len(head)), line)
    if "oversized" in faults:  # one huge field or very many
        head.append(b"X-Huge: " + b"v" * rng.randint(60_000, 140_000) if rng.random() < 0.5
                    else b"\r\n".join(b"X-Many-%d: %s" % (i, b"v" * 60) for i in range(1200)))
    data = b"\r\n".join(head) + b"\r\n\r\n" + body
    if "bare-lf" in faults:
        data = data.replace(b"\r\n", b"\n")
    if "mutated" in faults:
        mutable = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutable[rng.randrange(len(mutable))] = rng.randrange(256)
        data = bytes(mutable)
    if "truncated" in faults:
        data = data[:rng.randint(0, len(data) - 1)]
    return Case(data, method == b"HEAD")


def fuzzed_requests(seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    return [fuzzed_request(rng) for _ in range(count)]


@dataclass
class Outcome:
    status: int | None  # None: closed without a final answer
    body: bytes  # the answer's body (none for HEAD), or the bytes read before the close
    length: int = 0  # its Content-Length


def own_error(outcome: Outcome, case: Case) -> bool:
    """A 5xx the proxy answered itself other than an upstream error or the 501 for an unknown transfer coding."""
    status = outcome.status
    if status is None or status < 500 or status in UPSTREAM_ERRORS:
        return False
    if status == 501:
        unknown_coding = b"transfer coding" in outcome.body if not case.head_only else \
            b"transfer-encoding" in case.data.lower()
        return not unknown_coding
    return True


async def send_case(port: int, case: Case) -> Outcome:
    """Send one case on a fresh connection; read up to the first final answer (or EOF), then close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(case.data)
            await writer.drain()
        buffer = b""
        async with asyncio.timeout(ANSWER_BOUND):
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    head, rest = buffer[:end], buffer[end + 4:]
                    status = int(head[9:12])
                    if 100 <= status < 200:
                        buffer = rest
                        continue
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    expected = 0 if case.head_only else length
                    while len(rest) < expected:
                        more = await reader.read(65536)
                        if not more:
                            break
                        rest += more
                    return Outcome(status, rest[:expected], length)
                try:
                    data = await reader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    return Outcome(None, buffer)
                buffer += data
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def upstream_answer(received: Received) -> Reply:
    if received.method == "HEAD":  # the length of the body a GET would get, and no body
        return Reply(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n")
    return json_reply()


async def feedback(request: LocalRequest) -> LocalResponse:
    return LocalResponse.json(200, {"bytes": len(request.body)})


PREDICT = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
           b"X-Prediction-Id: fuzz-check\r\nConnection: close\r\nContent-Length: 18\r\n\r\n{\"instances\": [1]}")


async def raw_exchange(port: int, data: bytes) -> bytes:
    """The proxy's whole answer to `data`, byte for byte (the request asks it to close afterwards)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def test_the_fuzzed_requests_are_seeded_and_varied() -> None:
    cases = fuzzed_requests(SEED, CASES)
    assert [c.data for c in cases[:50]] == [c.data for c in fuzzed_requests(SEED, 50)]
    assert len({c.data for c in cases}) > CASES * 0.95
    assert sum(b"Transfer-Encoding" in c.data for c in cases) > 500
    assert sum(len(c.data) > 64 * 1024 for c in cases) > 50


async def test_fuzzed_requests_get_no_5xx_of_the_proxy_own_no_traceback_and_leave_it_working(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cases = fuzzed_requests(SEED, CASES)
    async with ScriptedUpstream(upstream_answer) as upstream, \
            running_proxy(upstream.port, head_timeout=0.3, idle_timeout=1.0, rest_body_timeout=0.3,
                          local_routes={"/v1/feedback": feedback}) as proxy:
        before = await raw_exchange(proxy.port, PREDICT)
        assert before.startswith(b"HTTP/1.1 200 OK\r\n")
        forwarded_before = upstream.received[-1]

        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(case: Case) -> Outcome:
            async with gate:
                return await send_case(proxy.port, case)

        outcomes = await asyncio.gather(*(bounded(case) for case in cases))
        statuses = Counter(outcome.status for outcome in outcomes)
        own_5xx = [(outcome.status, outcome.body, case.data[:200])
                   for outcome, case in zip(outcomes, cases, strict=True) if own_error(outcome, case)]
        assert own_5xx == [], f"the proxy answered 5xx itself: {own_5xx[:5]}"
        assert statuses[200] > 500 and statuses[400] > 500 and statuses[408] > 50, statuses
        assert statuses[502] + statuses[503] + statuses[504] == 0, statuses  # the upstream never failed

        await eventually(lambda: not proxy.connections, timeout=10, message="connections left open")
        after = await raw_exchange(proxy.port, PREDICT)
        assert after == before
        forwarded_after = upstream.received[-1]
        assert (forwarded_after.target, forwarded_after.headers, forwarded_after.body) == \
            (forwarded_before.target, forwarded_before.headers, forwarded_before.body)
        assert proxy.limit_events["header_timeout"] + proxy.limit_events["body_timeout"] >= statuses[408]

    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert tracebacks == [], [r.getMessage() for r in tracebacks[:5]]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
