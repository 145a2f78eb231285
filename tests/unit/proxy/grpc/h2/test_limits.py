"""The limits of the relay's client connections: the budgets on their own (`ConnectionGuard`, `RequestBuffers`),
then each limit on a socketless connection of a running relay (bytes in, frames and counters out)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry

from sidecar import config
from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.limits import (
    LIMITS,
    ConnectionGuard,
    H2Limits,
    RequestBuffers,
    new_limit_events,
)
from sidecar.proxy.grpc.h2.relay import H2GrpcProxy
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.metrics import LimitMetrics
from tests.support.helpers import eventually
from tests.unit.proxy.grpc.h2.memory import MemoryClient
from tests.unit.proxy.grpc.h2.test_relay import GRPC_REQUEST, framed, relay_to
from tests.unit.proxy.grpc.test_proxy import Upstream

DEADLINE_EXCEEDED = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]).encode()
RESOURCE_EXHAUSTED = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]).encode()


def engine_of(proxied: object) -> H2GrpcProxy:
    engine = proxied.proxy.engine  # type: ignore[attr-defined]
    assert isinstance(engine, H2GrpcProxy)
    return engine


def status(client: MemoryClient, stream_id: int) -> bytes | None:
    return client.trailers(stream_id).get(b"grpc-status")


def part(stream_id: int, size: int, message: int = 0, end_stream: bool = False) -> bytes:
    """A DATA frame of `size` bytes; with `message`, it starts a message of that many bytes."""
    body = b"\x00" + message.to_bytes(4, "big") + bytes(size - 5) if message else bytes(size)
    return frames.frame(frames.DATA, frames.END_STREAM if end_stream else 0, stream_id, body)


# --- the settings and the counter ---------------------------------------------------------------------------

def test_the_limits_default_to_the_settings_defaults() -> None:
    assert H2Limits.from_settings(ProxySettings()) == H2Limits()
    assert H2Limits().max_concurrent_streams == 128  # nginx's http2_max_concurrent_streams


def test_every_limit_is_a_setting_with_a_flag_and_an_environment_variable() -> None:
    settings = config.load(environ={"SIDECAR_H2_MAX_CONCURRENT_STREAMS": "64", "SIDECAR_H2_IDLE_TIMEOUT": "0",
                                    "SIDECAR_H2_MAX_TOTAL_BUFFERED_BYTES": "1GiB"})
    limits = H2Limits.from_settings(settings.proxy)
    assert (limits.max_concurrent_streams, limits.idle_timeout, limits.max_total_buffered_bytes) == (64, 0.0, 1024**3)
    with pytest.raises(config.ConfigError, match="SIDECAR_H2_MAX_CONCURRENT_STREAMS"):
        config.load(environ={"SIDECAR_H2_MAX_CONCURRENT_STREAMS": "0"})


def test_limit_events_are_exported_as_one_counter_with_a_bounded_limit_label() -> None:
    events = new_limit_events()
    events["resets"] += 2
    registry = CollectorRegistry()
    exported = LimitMetrics()
    exported.add("grpc", events)
    registry.register(exported)
    labels = {"protocol": "grpc"}
    assert registry.get_sample_value("sidecar_limit_events_total", {**labels, "limit": "resets"}) == 2.0
    assert registry.get_sample_value("sidecar_limit_events_total", {**labels, "limit": "control_frames"}) == 0.0
    samples = {sample.labels["limit"] for metric in registry.collect() for sample in metric.samples
               if sample.name == "sidecar_limit_events_total"}
    assert samples == set(LIMITS)


# --- the budgets without a connection ---------------------------------------------------------------------

def test_control_frames_beyond_the_budget_within_the_window_are_a_flood() -> None:
    guard = ConnectionGuard(H2Limits(max_control_frames=3, flood_window=10.0), events := new_limit_events())
    assert [guard.control_frame(1.0) for _ in range(4)] == [False, False, False, True]
    assert events["control_frames"] == 1
    guard.control_frame(12.0)  # a new window
    assert not guard.control_frame(12.5)


def test_control_frames_that_answer_the_relays_output_are_earned() -> None:
    guard = ConnectionGuard(H2Limits(max_control_frames=3), new_limit_events())
    for _ in range(100):
        assert not guard.control_frame(1.0)
        guard.control = 0  # what the connection does whenever it sends HEADERS or DATA


def test_empty_frames_count_only_in_a_row() -> None:
    guard = ConnectionGuard(H2Limits(max_empty_frames=2), events := new_limit_events())
    assert not guard.empty_frame() and not guard.empty_frame()
    guard.empty = 0  # a frame with payload
    assert not guard.empty_frame() and not guard.empty_frame()
    assert guard.empty_frame() and events["empty_frames"] == 1


def test_resets_spend_the_budget_only_while_they_are_most_of_the_streams() -> None:
    rapid = ConnectionGuard(H2Limits(max_resets=5), new_limit_events())
    outcomes = []
    for _ in range(7):
        rapid.stream_opened(1.0)
        outcomes.append(rapid.stream_reset(1.0))
    assert outcomes == [False] * 5 + [True, True]

    busy = ConnectionGuard(H2Limits(max_resets=5), events := new_limit_events())
    for _ in range(100):
        busy.stream_opened(1.0)
    assert not any(busy.stream_reset(1.0) for _ in range(50))  # half of a busy connection's calls cancelled
    assert busy.stream_reset(1.0) and events["resets"] == 1
    assert not busy.stream_reset(20.0)  # a new window


def test_request_buffers_refuse_beyond_the_connection_share_and_the_total() -> None:
    buffers = RequestBuffers(H2Limits(max_connection_buffered_bytes=100, max_total_buffered_bytes=150),
                             events := new_limit_events())
    assert buffers.refusal(0, 100) is None
    assert "on this connection" in (buffers.refusal(60, 41) or "")
    buffers.total = 120
    assert "limit 150" in (buffers.refusal(0, 31) or "")
    assert (events["connection_buffered_bytes"], events["total_buffered_bytes"]) == (1, 1)


# --- streams ----------------------------------------------------------------------------------------------

async def test_the_stream_limit_is_advertised_and_streams_beyond_it_are_refused(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_max_concurrent_streams=4) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        settings = dict(frames.unpack_settings(client.frames()[0][3]))
        assert settings[frames.SETTINGS_MAX_CONCURRENT_STREAMS] == 4
        for stream_id in range(1, 13, 2):  # six unary requests that are not complete
            client.send(client.headers(stream_id, GRPC_REQUEST))
        assert client.resets() == {9: frames.REFUSED_STREAM, 11: frames.REFUSED_STREAM}
        assert engine.limit_events["concurrent_streams"] == 2
        client.send(frames.rst_stream(1, frames.CANCEL), client.headers(13, GRPC_REQUEST),
                    frames.frame(frames.DATA, frames.END_STREAM, 13, framed(b"room")))
        await eventually(lambda: status(client, 13) is not None, timeout=10)
        assert status(client, 13) == b"0"
        client.lose()


async def test_a_reset_flood_ends_in_goaway(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_max_resets=20) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        for stream_id in range(1, 201, 2):
            client.send(client.headers(stream_id, GRPC_REQUEST), frames.rst_stream(stream_id, frames.CANCEL))
        assert client.goaway() == (frames.ENHANCE_YOUR_CALM, b"too many streams reset or refused")
        assert engine.limit_events["resets"] == 1
        assert client.connection.last_stream == 41  # the 21st reset ended it
        assert client.transport.closing


async def test_requests_that_are_not_grpc_spend_the_reset_budget(upstream: Upstream) -> None:
    get = tuple((b":method", b"GET") if name == b":method" else (name, value) for name, value in GRPC_REQUEST)
    async with relay_to(upstream.port, h2_max_resets=5) as proxied:
        client = MemoryClient.open(engine_of(proxied))
        for stream_id in range(1, 21, 2):
            client.send(client.headers(stream_id, get, end_stream=True))
        assert client.goaway() is not None and client.goaway()[0] == frames.ENHANCE_YOUR_CALM  # type: ignore[index]


# --- floods -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flood", [frames.frame(frames.PING, 0, 0, bytes(8)), frames.settings({}),
                                   frames.frame(frames.PRIORITY, 0, 1, bytes(5)), frames.window_update(1, 1),
                                   frames.rst_stream(1, frames.CANCEL), frames.frame(0x42, 0, 0, b"x")],
                         ids=["ping", "settings", "priority", "window_update", "rst_stream_idle", "unknown"])
async def test_control_frame_floods_end_in_goaway(upstream: Upstream, flood: bytes) -> None:
    async with relay_to(upstream.port, h2_max_control_frames=50) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        client.send(flood * 1000)
        assert client.goaway() == (frames.ENHANCE_YOUR_CALM, b"too many control frames")
        assert engine.limit_events["control_frames"] == 1
        acks = [frame for frame in client.received if frame[1] & frames.ACK and frame[0] == frames.PING]
        assert len(acks) <= 50


@pytest.mark.parametrize("empty", [frames.frame(frames.DATA, 0, 1),
                                   frames.frame(frames.DATA, frames.PADDED, 1, b"\x02ab"),  # padding only
                                   frames.frame(frames.CONTINUATION, 0, 1)],
                         ids=["data", "padded_data", "continuation"])
async def test_empty_frame_floods_end_in_goaway(upstream: Upstream, empty: bytes) -> None:
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        if empty[3] == frames.CONTINUATION:
            client.send(frames.frame(frames.HEADERS, 0, 1, b"\x83"))  # a header block begins
        else:
            client.send(client.headers(1, GRPC_REQUEST))
        client.send(empty * 10)  # ten in a row are tolerated
        assert client.goaway() is None
        client.send(empty)
        assert client.goaway() == (frames.ENHANCE_YOUR_CALM, b"too many empty frames")
        assert engine.limit_events["empty_frames"] == 1


async def test_a_header_block_beyond_its_bound_ends_in_goaway(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_max_header_block_bytes=32 * 1024) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        client.send(frames.frame(frames.HEADERS, 0, 1, bytes(16 * 1024)),
                    frames.frame(frames.CONTINUATION, 0, 1, bytes(16 * 1024)))
        assert client.goaway() is None
        client.send(frames.frame(frames.CONTINUATION, 0, 1, b"\x00"))
        assert client.goaway() == (frames.ENHANCE_YOUR_CALM, b"header block too large")
        assert engine.limit_events["header_block"] == 1


async def test_the_preface_must_be_followed_by_settings(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        client = MemoryClient.open(engine_of(proxied), preface=False)
        client.send(frames.PREFACE, frames.frame(frames.PING, 0, 0, bytes(8)))
        assert client.goaway() is not None and client.goaway()[0] == frames.PROTOCOL_ERROR  # type: ignore[index]


# --- what a peer that does not read can queue -------------------------------------------------------------

async def test_a_peer_that_does_not_read_stops_being_read_and_its_acks_stay_bounded(upstream: Upstream) -> None:
    limit = 64 * 1024
    async with relay_to(upstream.port, h2_write_buffer_bytes=limit, h2_max_control_frames=10**9) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine, reading=False)
        chunk = frames.frame(frames.PING, 0, 0, bytes(8)) * 2000  # 34 KB in, 34 KB of acknowledgements out
        sent = 0
        while not client.transport.reading_paused:
            client.send(chunk)
            sent += 1
            assert sent < 100
        assert engine.limit_events["write_buffer"] == 1
        assert client.transport.peak <= limit + len(chunk) + 1024  # one read's worth past the mark, no more
        assert engine.queued_bytes() <= limit + len(chunk) + 1024
        client.frames()  # the peer reads at last: reading resumes
        assert not client.transport.reading_paused
        client.lose()


async def test_a_peer_that_takes_nothing_is_closed_after_the_idle_timeout(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_write_buffer_bytes=16 * 1024, h2_max_control_frames=10**9,
                        h2_idle_timeout=0.3) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine, reading=False)
        client.send(frames.frame(frames.PING, 0, 0, bytes(8)) * 2000)
        assert client.transport.reading_paused
        await eventually(lambda: client.transport.lost, timeout=10)
        assert engine.limit_events["write_timeout"] == 1


# --- buffered request bytes -------------------------------------------------------------------------------

async def test_request_bytes_beyond_the_connection_buffer_are_refused(upstream: Upstream) -> None:
    kib = 1024
    async with relay_to(upstream.port, h2_max_connection_buffered_bytes=100 * kib) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        client.send(client.headers(1, GRPC_REQUEST), client.headers(3, GRPC_REQUEST),
                    part(1, 40 * kib, message=80 * kib - 5), part(3, 40 * kib, message=80 * kib - 5))
        assert engine.buffered_request_bytes == 80 * kib
        client.send(part(3, 40 * kib))  # stream 3 asks for 40 KiB more
        trailers = client.trailers(3)
        assert trailers[b"grpc-status"] == RESOURCE_EXHAUSTED and b"on this connection" in trailers[b"grpc-message"]
        assert client.resets()[3] == frames.NO_ERROR  # the client is told to stop sending
        assert engine.buffered_request_bytes == 40 * 1024
        assert engine.limit_events["connection_buffered_bytes"] == 1
        client.send(part(1, 40 * kib, end_stream=True))  # stream 1 completes: its request goes upstream
        assert engine.buffered_request_bytes == 0
        await eventually(lambda: status(client, 1) is not None, timeout=10)
        assert status(client, 1) == b"0" and len(upstream.calls[0].request) == 80 * kib - 5
        client.lose()


async def test_request_bytes_beyond_the_total_buffer_are_refused(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_max_total_buffered_bytes=100 * 1024) as proxied:
        engine = engine_of(proxied)
        first, second = MemoryClient.open(engine), MemoryClient.open(engine)
        for client in (first, second):
            client.send(client.headers(1, GRPC_REQUEST), part(1, 60 * 1024, message=100 * 1024))
        assert status(second, 1) == RESOURCE_EXHAUSTED
        assert engine.limit_events["total_buffered_bytes"] == 1
        assert engine.buffered_request_bytes == 60 * 1024
        first.lose()
        assert engine.buffered_request_bytes == 0
        second.lose()


# --- timeouts ---------------------------------------------------------------------------------------------

async def test_a_deadline_runs_from_the_headers_not_from_the_end_of_the_request(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        client.send(client.headers(1, (*GRPC_REQUEST, (b"grpc-timeout", b"200m"))),
                    frames.frame(frames.DATA, 0, 1, b"\x00\x00\x00\x00\x10half"))
        await eventually(lambda: status(client, 1) is not None, timeout=10)
        assert status(client, 1) == DEADLINE_EXCEEDED
        assert client.resets()[1] == frames.NO_ERROR
        assert engine.limit_events["request_timeout"] == 1 and engine.buffered_request_bytes == 0
        assert upstream.calls == []
        client.lose()


async def test_an_incomplete_request_without_deadline_ends_after_the_upstream_timeout(upstream: Upstream) -> None:
    async with relay_to(upstream.port, upstream_timeout=0.3) as proxied:
        client = MemoryClient.open(engine_of(proxied))
        client.send(client.headers(1, GRPC_REQUEST))
        await eventually(lambda: status(client, 1) is not None, timeout=10)
        assert client.trailers(1)[b"grpc-message"] == b"sidecar: the request did not complete within 0.3 s"
        client.lose()


async def test_a_connection_without_calls_is_closed_after_the_idle_timeout(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_idle_timeout=0.3) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        client.send(client.headers(1, GRPC_REQUEST), frames.frame(frames.DATA, frames.END_STREAM, 1, framed(b"x")))
        await eventually(lambda: status(client, 1) == b"0", timeout=10)
        await eventually(lambda: client.transport.lost, timeout=10)
        assert client.goaway() == (frames.NO_ERROR, b"idle for 0.3 s")
        assert engine.limit_events["idle_timeout"] == 1


async def test_a_partial_preface_is_closed_after_the_preface_timeout(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_preface_timeout=0.2) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine, preface=False)
        client.send(frames.PREFACE[:10])
        await asyncio.sleep(0.05)
        assert not client.transport.closing
        await eventually(lambda: client.transport.lost, timeout=10)
        assert engine.limit_events["preface_timeout"] == 1


async def test_frames_after_the_end_of_a_request_reset_the_stream_and_go_nowhere(upstream: Upstream) -> None:
    """Found by the fuzzer: DATA with END_STREAM repeated on a complete unary request started it again each time."""
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        client = MemoryClient.open(engine)
        request = frames.frame(frames.DATA, frames.END_STREAM, 1, framed(b"once"))
        client.send(client.headers(1, (*GRPC_REQUEST, (b"x-test-sleep", b"0.2"))), request, request * 50)
        assert client.resets() == {1: frames.STREAM_CLOSED}
        assert not client.connection.calls and client.goaway() is None
        await asyncio.sleep(0.4)
        assert len(upstream.calls) <= 1 and engine.open_connections == 1
        client.lose()


async def test_connections_beyond_the_limit_get_goaway(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_max_connections=2) as proxied:
        engine = engine_of(proxied)
        first, second, third = (MemoryClient.open(engine) for _ in range(3))
        assert (first.goaway(), second.goaway()) == (None, None)
        assert third.goaway() == (frames.NO_ERROR, b"too many connections") and third.transport.closing
        assert engine.limit_events["connections"] == 1 and engine.open_connections == 2
        first.lose()
        fourth = MemoryClient.open(engine)
        assert fourth.goaway() is None
        for client in (second, fourth):
            client.lose()
