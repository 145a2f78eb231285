"""Floods against the relay over loopback: each ends in GOAWAY or refused streams, with what the relay holds bounded
(asserted on its own byte counters), and a valid gRPC call on a fresh connection is answered afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.hpack import HeaderEncoder
from sidecar.proxy.grpc.h2.relay import H2GrpcProxy
from tests.support.helpers import eventually
from tests.unit.proxy.grpc.h2.memory import parse_frames
from tests.unit.proxy.grpc.h2.test_relay import GRPC_REQUEST, relay_to
from tests.unit.proxy.grpc.test_proxy import Proxied, Upstream

OPENING = frames.PREFACE + frames.settings({})
PING = frames.frame(frames.PING, 0, 0, bytes(8))


class Peer:
    """A raw loopback connection to the relay; `receive_buffer` shrinks the kernel's buffer for a peer that does not
    read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""
        self.reset = False

    @classmethod
    async def connect(cls, port: int, receive_buffer: int | None = None) -> Peer:
        sock = socket.socket()
        sock.setblocking(False)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(*await asyncio.open_connection(sock=sock))

    async def send(self, data: bytes, timeout: float = 10.0) -> bool:
        """Write `data`; False when the relay stopped taking it (closed, or not reading) within `timeout`."""
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), timeout)
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def read_to_end(self, timeout: float = 10.0) -> bytes:
        """Everything until the relay closes the connection."""
        async def read() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await self.reader.read(1 << 16):
                    self.received += chunk
        await asyncio.wait_for(read(), timeout)
        return self.received

    def goaway(self) -> tuple[int, bytes] | None:
        for kind, _, _, payload in parse_frames(self.received):
            if kind == frames.GOAWAY:
                return frames.unpack_u32(payload, 4), payload[8:]
        return None

    def resets(self) -> dict[int, int]:
        return {sid: frames.unpack_u32(payload) for kind, _, sid, payload in parse_frames(self.received)
                if kind == frames.RST_STREAM}

    def close(self) -> None:
        self.writer.transport.abort()


def engine_of(proxied: Proxied) -> H2GrpcProxy:
    engine = proxied.proxy.engine
    assert isinstance(engine, H2GrpcProxy)
    return engine


async def still_answers(proxied: Proxied) -> None:
    """A valid call on a fresh connection (the channel connects on its first call) is answered."""
    assert await proxied.unary()(b"after the flood", timeout=10) == b"echo:after the flood"


async def flood(proxied: Proxied, data: bytes) -> Peer:
    """Send `data` after the client preface while reading what comes back, until the relay closes."""
    peer = await Peer.connect(proxied.proxy.port or 0)
    reading = asyncio.ensure_future(peer.read_to_end())
    await peer.send(OPENING + data)
    await reading
    peer.close()
    return peer


async def test_a_settings_flood_ends_in_goaway(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        peer = await flood(proxied, frames.settings({}) * 100_000)
        assert peer.goaway() == (frames.ENHANCE_YOUR_CALM, b"too many control frames")
        acks = sum(1 for kind, flags, _, _ in parse_frames(peer.received) if kind == frames.SETTINGS and flags)
        assert acks <= engine.limits.max_control_frames
        assert engine.limit_events["control_frames"] == 1
        await still_answers(proxied)


async def test_a_ping_flood_to_a_peer_that_does_not_read_ends_in_goaway(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        peer = await Peer.connect(proxied.proxy.port or 0, receive_buffer=4096)
        await peer.send(OPENING + PING * 200_000, timeout=2.0)  # never reads a byte
        await eventually(lambda: engine.limit_events["control_frames"] == 1, timeout=10)
        await eventually(lambda: engine.open_connections == 0, timeout=10)  # closed, lingering at most 2 s
        assert engine.queued_bytes() == 0
        peer.close()
        await still_answers(proxied)


async def test_a_ping_flood_to_a_peer_that_does_not_read_stops_being_read(upstream: Upstream) -> None:
    """With the control frame budget out of the way, the write buffer alone bounds what a non-reading peer costs:
    the relay stops reading it above the mark, and closes it when it has taken nothing for the idle timeout."""
    mark = 256 * 1024
    async with relay_to(upstream.port, h2_max_control_frames=10**9, h2_write_buffer_bytes=mark,
                        h2_idle_timeout=1.0) as proxied:
        engine = engine_of(proxied)
        peer = await Peer.connect(proxied.proxy.port or 0, receive_buffer=4096)
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, engine.queued_bytes())
                await asyncio.sleep(0.005)

        sampling = asyncio.ensure_future(sample())
        chunk = PING * 4000  # 68 KB in, 68 KB of acknowledgements out
        sent = await peer.send(OPENING)
        for _ in range(1000):  # up to 68 MB: far more than the kernel's buffers hold
            if not await peer.send(chunk, timeout=0.3):
                break  # the relay stopped reading
        else:
            pytest.fail("the relay never stopped reading a peer that does not read")
        assert sent and engine.limit_events["write_buffer"] >= 1
        await eventually(lambda: engine.open_connections == 0, timeout=10)
        sampling.cancel()
        assert engine.limit_events["write_timeout"] == 1
        assert peak <= mark + 512 * 1024  # the mark, plus the acknowledgements of one read
        peer.close()
        await still_answers(proxied)


@pytest.mark.parametrize(("fragment", "limit"), [(b"", "empty_frames"), (b"\x00", "header_block")],
                         ids=["empty", "one_byte"])
async def test_a_continuation_flood_ends_in_goaway(upstream: Upstream, fragment: bytes, limit: str) -> None:
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        block = HeaderEncoder().encode(GRPC_REQUEST)
        peer = await flood(proxied, frames.frame(frames.HEADERS, 0, 1, block)
                           + frames.frame(frames.CONTINUATION, 0, 1, fragment) * 100_000)
        code, _ = peer.goaway() or (None, b"")
        assert code == frames.ENHANCE_YOUR_CALM
        assert engine.limit_events[limit] == 1
        await still_answers(proxied)


async def test_rapid_reset_of_ten_thousand_streams_ends_in_goaway(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        encoder = HeaderEncoder()
        streams = b"".join(frames.headers(stream_id, encoder.encode(GRPC_REQUEST), True, frames.DEFAULT_MAX_FRAME)
                           + frames.rst_stream(stream_id, frames.CANCEL) for stream_id in range(1, 20_000, 2))
        peer = await flood(proxied, streams)
        assert peer.goaway() == (frames.ENHANCE_YOUR_CALM, b"too many streams reset or refused")
        assert engine.limit_events["resets"] == 1
        last_stream = frames.unpack_u31(next(payload for kind, _, _, payload in parse_frames(peer.received)
                                             if kind == frames.GOAWAY))
        assert last_stream == 2 * (engine.limits.max_resets + 1) - 1  # no stream after the budget was spent
        await asyncio.sleep(0.2)
        assert len(upstream.calls) <= engine.limits.max_resets + 1  # what reached the model server, at most
        await still_answers(proxied)


def open_streams(count: int, size: int) -> bytes:
    """`count` unary requests, each `size` bytes of a message twice as long, none ending."""
    encoder = HeaderEncoder()
    data = b"\x00" + (2 * size).to_bytes(4, "big") + bytes(size - 5)
    return b"".join(frames.headers(stream_id, encoder.encode(GRPC_REQUEST), False, frames.DEFAULT_MAX_FRAME)
                    + frames.frame(frames.DATA, 0, stream_id, data) for stream_id in range(1, 2 * count, 2))


async def test_two_thousand_open_streams_are_refused_beyond_the_limit(upstream: Upstream) -> None:
    size = 64 * 1024
    async with relay_to(upstream.port) as proxied:
        engine = engine_of(proxied)
        peer = await flood(proxied, open_streams(2000, size))
        limit = engine.limits.max_concurrent_streams
        assert engine.peak_buffered_request_bytes <= limit * size
        refused = peer.resets()
        assert refused and set(refused.values()) == {frames.REFUSED_STREAM} and min(refused) == 2 * limit + 1
        assert peer.goaway() == (frames.ENHANCE_YOUR_CALM, b"too many streams reset or refused")
        assert engine.limit_events["concurrent_streams"] == engine.limits.max_resets + 1
        assert engine.buffered_request_bytes == 0  # the calls went with their connection
        await still_answers(proxied)


async def test_open_streams_beyond_the_connection_buffer_are_refused(upstream: Upstream) -> None:
    size, budget = 64 * 1024, 1024 * 1024
    async with relay_to(upstream.port, h2_max_connection_buffered_bytes=budget, h2_max_resets=10**6) as proxied:
        engine = engine_of(proxied)
        peer = Peer(*await asyncio.open_connection("127.0.0.1", proxied.proxy.port))
        reading = asyncio.ensure_future(peer.read_to_end(timeout=30))
        await peer.send(OPENING + open_streams(500, size))
        await eventually(lambda: engine.limit_events["connection_buffered_bytes"] == 500 - budget // size,
                         timeout=20)
        assert engine.peak_buffered_request_bytes <= budget
        assert engine.buffered_request_bytes == budget // size * size
        peer.close()
        reading.cancel()
        await eventually(lambda: engine.buffered_request_bytes == 0, timeout=10)
        await still_answers(proxied)


async def test_partial_prefaces_are_closed_after_the_preface_timeout(upstream: Upstream) -> None:
    async with relay_to(upstream.port, h2_preface_timeout=0.5) as proxied:
        engine = engine_of(proxied)
        peers = [await Peer.connect(proxied.proxy.port or 0) for _ in range(200)]
        started = asyncio.get_running_loop().time()
        for peer in peers:
            await peer.send(frames.PREFACE[:10])
        await asyncio.gather(*(peer.read_to_end(timeout=5) for peer in peers))  # every one closed by the relay
        assert asyncio.get_running_loop().time() - started < 3
        assert engine.limit_events["preface_timeout"] == 200 and engine.open_connections == 0
        for peer in peers:
            peer.close()
        await still_answers(proxied)

