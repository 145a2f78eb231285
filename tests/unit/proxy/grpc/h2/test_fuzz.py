"""5,000 seeded random HTTP/2 frame sequences (valid-ish frames, then mutated lengths, flags and stream ids, split
anywhere) fed to socketless client connections of a running relay: no exception escapes, no traceback is logged,
nothing stays buffered, and a valid call is answered byte for byte as before."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import struct
from typing import Any

import pytest

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.hpack import encode_headers
from sidecar.proxy.grpc.h2.relay import H2GrpcProxy
from tests.support.helpers import eventually
from tests.unit.proxy.grpc.h2.memory import MemoryClient
from tests.unit.proxy.grpc.h2.test_relay import GRPC_REQUEST, RawPeer, Reply, framed, relay_to
from tests.unit.proxy.grpc.test_proxy import Upstream

SEED = 9113
SEQUENCES = 5000
REQUEST = encode_headers(GRPC_REQUEST)  # literals only: any decoder state reads it
TIMED_REQUEST = encode_headers((*GRPC_REQUEST, (b"grpc-timeout", b"2S")))
KINDS = [frames.DATA, frames.HEADERS, frames.PRIORITY, frames.RST_STREAM, frames.SETTINGS, frames.PUSH_PROMISE,
         frames.PING, frames.GOAWAY, frames.WINDOW_UPDATE, frames.CONTINUATION, 0x0A, 0x42, 0xFF]
WEIGHTS = [6, 6, 1, 2, 2, 1, 2, 1, 2, 3, 1, 1, 1]
FLAGS = [0, frames.END_STREAM, frames.END_HEADERS, frames.END_HEADERS | frames.END_STREAM, frames.PADDED,
         frames.PRIORITY_FLAG | frames.END_HEADERS, frames.ACK]
VALID_KINDS = [frames.DATA, frames.HEADERS, frames.PRIORITY, frames.RST_STREAM, frames.SETTINGS, frames.PING,
               frames.GOAWAY, frames.WINDOW_UPDATE]
VALID_WEIGHTS = [8, 4, 1, 2, 1, 2, 1, 2]
NUMBERS = [0, 1, 5, 6, 8, 16_383, 16_384, 65_535, 2**24 - 1, 2**24, 2**31 - 1, 2**31, 2**32 - 1]


def random_bytes(rng: random.Random, most: int = 64) -> bytes:
    return rng.randbytes(rng.randrange(most + 1))


def payload_of(rng: random.Random, kind: int) -> bytes:
    """A payload for a frame of `kind`, valid or not."""
    if kind == frames.DATA:
        return rng.choice([framed(random_bytes(rng)), b"", random_bytes(rng), b"\x00\x00\x00\x00\x09abc",
                           framed(b"a") + framed(b"b")])
    if kind == frames.HEADERS:
        block = rng.choice([REQUEST, TIMED_REQUEST, REQUEST[:rng.randrange(len(REQUEST))], random_bytes(rng), b""])
        return rng.randbytes(5) + block if rng.random() < 0.2 else block
    if kind == frames.CONTINUATION:
        return rng.choice([b"", REQUEST[rng.randrange(len(REQUEST)):], random_bytes(rng)])
    if kind == frames.SETTINGS:
        return b"".join(struct.pack(">HI", rng.randrange(9), rng.choice(NUMBERS) & 0xFFFF_FFFF)
                        for _ in range(rng.randrange(4))) + (random_bytes(rng, 5) if rng.random() < 0.1 else b"")
    if kind == frames.PING:
        return rng.randbytes(8) if rng.random() < 0.8 else random_bytes(rng, 12)
    if kind in (frames.WINDOW_UPDATE, frames.RST_STREAM):
        value = struct.pack(">I", rng.choice(NUMBERS) & 0xFFFF_FFFF)
        return value if rng.random() < 0.85 else random_bytes(rng, 8)
    if kind == frames.PRIORITY:
        return rng.randbytes(5) if rng.random() < 0.8 else random_bytes(rng, 8)
    if kind == frames.GOAWAY:
        return struct.pack(">II", rng.choice(NUMBERS) & 0x7FFF_FFFF, rng.randrange(16)) + random_bytes(rng, 16)
    return random_bytes(rng)


class Script:
    """The streams a sequence has opened, so that most frames make sense where they are."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.next_stream = 1
        self.opened: list[int] = []

    def stream(self) -> int:
        return self.rng.choice(self.opened) if self.opened and self.rng.random() < 0.9 else self.next_stream

    def valid(self) -> list[bytes]:
        """Frames a well-behaved client could send here (one frame, or a header block in pieces)."""
        rng = self.rng
        kind = rng.choices(VALID_KINDS, VALID_WEIGHTS)[0]
        if kind == frames.HEADERS or not self.opened:
            stream_id, self.next_stream = self.next_stream, self.next_stream + 2
            self.opened.append(stream_id)
            block = rng.choice([REQUEST, TIMED_REQUEST])
            end = frames.END_STREAM if rng.random() < 0.3 else 0
            if rng.random() < 0.2:  # split into HEADERS and CONTINUATION
                cut = rng.randrange(len(block))
                return [frames.frame(frames.HEADERS, end, stream_id, block[:cut]),
                        frames.frame(frames.CONTINUATION, frames.END_HEADERS, stream_id, block[cut:])]
            return [frames.frame(frames.HEADERS, end | frames.END_HEADERS, stream_id, block)]
        if kind == frames.DATA:
            end = frames.END_STREAM if rng.random() < 0.5 else 0
            body = rng.choice([framed(random_bytes(rng)), framed(random_bytes(rng))[:3], b"",
                               bytes(rng.randrange(1, 9000))])
            return [frames.frame(frames.DATA, end, self.stream(), body)]
        if kind == frames.RST_STREAM:
            code = rng.choice([frames.CANCEL, frames.NO_ERROR, frames.INTERNAL_ERROR])
            return [frames.rst_stream(self.stream(), code)]
        if kind == frames.WINDOW_UPDATE:
            return [frames.window_update(rng.choice([0, self.stream()]), rng.randrange(1, 1 << 16))]
        if kind == frames.PRIORITY:
            return [frames.frame(frames.PRIORITY, 0, self.stream(), rng.randbytes(5))]
        if kind == frames.PING:
            return [frames.frame(frames.PING, rng.choice([0, frames.ACK]), 0, rng.randbytes(8))]
        if kind == frames.SETTINGS:
            return [rng.choice([frames.SETTINGS_ACK, frames.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20}),
                                frames.settings({frames.SETTINGS_HEADER_TABLE_SIZE: rng.randrange(8192)})])]
        return [frames.goaway(0, frames.NO_ERROR)]


    def burst(self) -> list[bytes]:
        """Many new streams at once, reset by the client right away or not."""
        rng = self.rng
        reset = rng.random() < 0.5
        parts = []
        for _ in range(rng.randrange(10, 60)):
            stream_id, self.next_stream = self.next_stream, self.next_stream + 2
            parts.append(frames.frame(frames.HEADERS, frames.END_HEADERS | frames.END_STREAM * (rng.random() < 0.5),
                                      stream_id, REQUEST))
            if reset:
                parts.append(frames.rst_stream(stream_id, frames.CANCEL))
        return parts


def random_frame(rng: random.Random, script: Script) -> bytes:
    if rng.random() < 0.03:
        return b"".join(script.burst())
    if rng.random() < 0.8:
        parts = script.valid()
        if rng.random() < 0.04:  # a flood of it
            parts = parts * rng.choice([20, 300, 3000])
        return b"".join(parts)
    kind = rng.choices(KINDS, WEIGHTS)[0]
    stream_id = rng.choice([0, 1, 1, 3, 3, 5, 2, 7, rng.randrange(1, 2**31, 2), rng.randrange(2**32)])
    flags = rng.choice(FLAGS) if rng.random() < 0.9 else rng.randrange(256)
    payload = payload_of(rng, kind)
    if flags & frames.PADDED and rng.random() < 0.7:
        pad = rng.randrange(8)
        payload = bytes((pad,)) + payload + bytes(pad)
    frame = frames.FRAME_HEADER.pack(len(payload) >> 16, len(payload) & 0xFFFF, kind, flags,
                                     stream_id & 0xFFFF_FFFF) + payload
    mutation = rng.random()
    if mutation < 0.2:  # a length that lies
        length = rng.choice([0, 1, len(payload) - 1, len(payload) + 1, rng.randrange(1 << 24)]) & 0xFFFFFF
        frame = struct.pack(">BH", length >> 16, length & 0xFFFF) + frame[3:]
    elif mutation < 0.3:  # cut short
        frame = frame[:rng.randrange(len(frame) + 1)]
    elif mutation < 0.4:  # a flipped bit anywhere
        position = rng.randrange(len(frame))
        frame = frame[:position] + bytes((frame[position] ^ (1 << rng.randrange(8)),)) + frame[position + 1:]
    return frame


def sequence(rng: random.Random) -> bytes:
    opening = frames.PREFACE + frames.settings({frames.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20})
    roll = rng.random()
    if roll < 0.03:
        opening = opening[:rng.randrange(len(opening))]
    elif roll < 0.05:
        opening = random_bytes(rng, 40)
    script = Script(rng)
    return opening + b"".join(random_frame(rng, script) for _ in range(rng.randrange(1, 25)))


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 7, 9, 64, len(data)]) if rng.random() < 0.5 else rng.randrange(1, len(data) + 1)
        out.append(data[pos:pos + size])
        pos += size
    return out


async def valid_call(port: int) -> Reply:
    peer = await RawPeer.connect(port)
    try:
        peer.send(peer.headers(1, (*GRPC_REQUEST, (b"x-prediction-id", b"fuzz-check"))),
                  frames.frame(frames.DATA, frames.END_STREAM, 1, framed(b"the same bytes")))
        return await peer.reply(1)
    finally:
        await peer.close()


# Small limits, so that the sequences reach them too.
LIMITS = {"h2_max_concurrent_streams": 8, "h2_max_resets": 20, "h2_max_control_frames": 2000, "h2_max_empty_frames": 5,
          "h2_max_header_block_bytes": 4096, "h2_write_buffer_bytes": 16 * 1024,
          "h2_max_connection_buffered_bytes": 32 * 1024, "h2_max_total_buffered_bytes": 256 * 1024}


async def test_fuzzed_frame_sequences_leave_the_relay_answering_as_before(
        upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    rng = random.Random(SEED)
    caplog.set_level(logging.INFO, logger="sidecar")
    async with relay_to(upstream.port, **LIMITS) as proxied:
        engine = proxied.proxy.engine
        assert isinstance(engine, H2GrpcProxy) and proxied.proxy.port is not None
        before = await valid_call(proxied.proxy.port)
        batch: list[MemoryClient] = []
        for number in range(1, SEQUENCES + 1):
            client = MemoryClient.open(engine, preface=False, reading=rng.random() < 0.8)
            for chunk in chunks(rng, sequence(rng)):
                if client.transport.closing:
                    break
                client.send(chunk)
            batch.append(client)
            if len(batch) == 50:  # let answers come back from upstream to the open ones, then let them go
                await asyncio.sleep(0.2 if number % 1000 == 0 else 0.01)
                for client in batch:
                    if rng.random() < 0.5:
                        client.transport.take()
                    client.lose()
                batch = []
        for client in batch:
            client.lose()
        await eventually(lambda: engine.open_connections == 0, timeout=10)
        await asyncio.sleep(0.1)
        assert engine.buffered_request_bytes == 0
        after = await valid_call(proxied.proxy.port)
        assert await proxied.unary()(b"still", timeout=10) == b"echo:still"
        reached = {limit for limit, count in engine.limit_events.items() if count}
    loop.set_exception_handler(None)
    assert escaped == []
    tracebacks = [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
    assert tracebacks == []
    assert (after.headers, after.data, after.reset) == (before.headers, before.data, before.reset)
    assert after.data == framed(b"echo:the same bytes")
    assert {"concurrent_streams", "resets", "control_frames", "empty_frames", "write_buffer"} <= reached
    codes: collections.Counter[str] = collections.Counter()
    for key, count in proxied.metrics.requests.items():
        codes[key[4]] += count
    assert codes["OK"] > 10 and codes["CANCELLED"] > 1000  # valid calls among the noise went upstream
