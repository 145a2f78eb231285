"""The HTTP/2 relay engine beyond the shared GrpcProxy specification (test_grpc.py): flow control with large
streams, compression, upstream stream limits, what HTTP/2 peers may do that gRPC libraries do not (refused
streams, GOAWAY, resets, HTTP errors, frames split anywhere, non-gRPC requests, garbage), and graceful stops.

gRPC clients and upstreams are real grpc.aio ones where a gRPC library can say it; the rest is scripted over
raw HTTP/2 frames (`RawPeer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from sidecar.codec.bodies import request_bytes, response_bytes
from sidecar.messages.records import CaptureRecord
from sidecar.proxy.grpc.engine import GrpcProxy
from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.hpack import Header, HeaderDecoder, HeaderEncoder
from sidecar.proxy.grpc.h2.relay import H2GrpcProxy
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import disabled
from tests.unit.proxy.grpc.test_proxy import BIG_OPTIONS, CHAT, PREDICT, PREDICT_M, Proxied, Upstream, running_proxy

GRPC_REQUEST: tuple[Header, ...] = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", PREDICT.encode()),
                                    (b":authority", b"sidecar"), (b"content-type", b"application/grpc"),
                                    (b"te", b"trailers"))
ANSWER = b"\x12\x04\x0a\x02ok"


def framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass
class Reply:
    headers: list[dict[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    reset: int | None = None

    @property
    def status(self) -> bytes | None:
        return self.headers[-1].get(b"grpc-status") if self.headers else None


class RawPeer:
    """A bare HTTP/2 endpoint over asyncio streams, for scripting what gRPC libraries never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = HeaderEncoder(), HeaderDecoder()

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        peer = cls(*await asyncio.open_connection("127.0.0.1", port))
        peer.send(frames.PREFACE, frames.settings({}))
        return peer

    def send(self, *data: bytes) -> None:
        self.writer.write(b"".join(data))

    def headers(self, stream_id: int, fields: tuple[Header, ...], end_stream: bool = False) -> bytes:
        return frames.headers(stream_id, self.encoder.encode(fields), end_stream, frames.DEFAULT_MAX_FRAME)

    async def frame(self) -> tuple[int, int, int, bytes]:
        high, low, kind, flags, stream_id = frames.FRAME_HEADER.unpack(await self.reader.readexactly(9))
        return kind, flags, stream_id & 0x7FFF_FFFF, await self.reader.readexactly((high << 16) | low)

    async def reply(self, stream_id: int) -> Reply:
        """Frames until `stream_id` ends (SETTINGS and PING answered on the way)."""
        reply = Reply()
        while True:
            kind, flags, sid, payload = await asyncio.wait_for(self.frame(), 10)
            if kind == frames.SETTINGS and not flags & frames.ACK:
                self.send(frames.SETTINGS_ACK)
            elif kind == frames.PING and not flags & frames.ACK:
                self.send(frames.ping_ack(payload))
            elif sid != stream_id:
                continue
            elif kind == frames.HEADERS:
                reply.headers.append(dict(self.decoder.decode(payload).fields))
            elif kind == frames.DATA:
                reply.data += payload
            elif kind == frames.RST_STREAM:
                reply.reset = frames.unpack_u32(payload)
                return reply
            if sid == stream_id and kind in (frames.HEADERS, frames.DATA) and flags & frames.END_STREAM:
                return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


Script = Callable[[RawPeer, int, int], Awaitable[None]]  # (peer, stream id, connection number)


@dataclass
class Scripted:
    port: int = 0
    requests: list[int] = field(default_factory=list)  # requests seen, per connection


@contextlib.asynccontextmanager
async def scripted_upstream(script: Script) -> AsyncIterator[Scripted]:
    """An HTTP/2 server that reads each request whole, then lets `script` answer it."""
    scripted = Scripted()
    seen = scripted.requests

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = RawPeer(reader, writer)
        number = len(seen)
        seen.append(0)
        try:
            assert await reader.readexactly(len(frames.PREFACE)) == frames.PREFACE
            peer.send(frames.settings({}))
            while True:
                kind, flags, stream_id, payload = await peer.frame()
                if kind == frames.HEADERS:
                    peer.decoder.decode(payload)
                if kind == frames.SETTINGS and not flags & frames.ACK:
                    peer.send(frames.SETTINGS_ACK)
                elif kind in (frames.HEADERS, frames.DATA) and flags & frames.END_STREAM:
                    seen[number] += 1
                    await script(peer, stream_id, number)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        scripted.port = int(server.sockets[0].getsockname()[1])
        yield scripted
    finally:
        server.close()


def answered(peer: RawPeer, stream_id: int) -> None:
    peer.send(peer.headers(stream_id, ((b":status", b"200"), (b"content-type", b"application/grpc"))),
              frames.frame(frames.DATA, 0, stream_id, framed(ANSWER)),
              peer.headers(stream_id, ((b"grpc-status", b"0"),), end_stream=True))


@contextlib.asynccontextmanager
async def relay_to(port: int, **settings: Any) -> AsyncIterator[Proxied]:
    async with running_proxy(port, **settings) as proxied:
        assert isinstance(proxied.proxy.engine, H2GrpcProxy)
        yield proxied


# --- the engine -------------------------------------------------------------------------------------------------

def test_the_default_engine_is_the_h2_relay() -> None:
    proxy = GrpcProxy(ProxySettings(listen_grpc=("127.0.0.1", 0)), capture=None, metrics=RequestMetrics(),
                      tracing=disabled())
    assert isinstance(proxy.engine, H2GrpcProxy)


# --- flow control, compression, limits ------------------------------------------------------------------------

async def test_a_stream_moves_dozens_of_mebibytes_each_way(upstream: Upstream) -> None:
    messages = [bytes([index]) * (1024 * 1024) for index in range(24)]
    async with relay_to(upstream.port) as proxied:
        call = proxied.channel.stream_stream(CHAT)(iter(messages))
        received = [message async for message in call]
        await asyncio.sleep(0.05)
        assert proxied.metrics.request_size.series[("", "", "grpc", "other")][-1] == 24 * 1024 * 1024
    assert received == [b"re:" + message for message in messages]


async def test_compressed_messages_pass_unchanged_and_are_captured_decodably() -> None:
    request = PREDICT_M + b"\x32\x80\x20" + bytes(4096)  # with a compressible client_id (field 6) of 4 KiB

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"\x12" + request[1:]  # a PredictResponse-shaped answer

    server = grpc.aio.server(options=BIG_OPTIONS, compression=grpc.Compression.Gzip)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with relay_to(port) as proxied:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxied.proxy.port}", compression=grpc.Compression.Gzip)
            try:
                answer = await channel.unary_unary(PREDICT)(request, timeout=10)
            finally:
                await channel.close()
            await asyncio.sleep(0.05)
            record, = proxied.records
    finally:
        await server.stop(0)
    assert answer == b"\x12" + request[1:]
    assert (record.model, record.version) == ("m", "3")
    assert record.request[0] == 1 and gzip.decompress(record.request[5:]) == request  # as it went over the wire
    assert record.response[0] == 1
    assert request_bytes(record) == request and response_bytes(record) == answer


async def test_an_upstream_limit_on_concurrent_streams_queues_calls() -> None:
    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.02)
        return request

    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(slow)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with relay_to(port) as proxied:
            payloads = [b"call-%d" % index for index in range(12)]
            answers = await asyncio.gather(*(proxied.unary()(payload, timeout=20) for payload in payloads))
    finally:
        await server.stop(0)
    assert answers == payloads


# --- what HTTP/2 upstreams may do -----------------------------------------------------------------------------

async def test_a_refused_stream_is_sent_again_once() -> None:
    async def refuse_first(peer: RawPeer, stream_id: int, connection: int) -> None:
        if stream_id == 1:
            peer.send(frames.rst_stream(stream_id, frames.REFUSED_STREAM))
        else:
            answered(peer, stream_id)

    async with scripted_upstream(refuse_first) as scripted, relay_to(scripted.port) as proxied:
        assert await proxied.unary()(PREDICT_M, timeout=10) == ANSWER
        assert scripted.requests == [2]
        assert proxied.metrics.requests == {("m", "3", "grpc", "predict", "OK"): 1}


async def test_calls_refused_by_goaway_go_to_a_new_connection() -> None:
    async def go_away_first(peer: RawPeer, stream_id: int, connection: int) -> None:
        if connection == 0:
            peer.send(frames.goaway(0, frames.NO_ERROR))
            await peer.close()
        else:
            answered(peer, stream_id)

    async with scripted_upstream(go_away_first) as scripted, relay_to(scripted.port) as proxied:
        assert await proxied.unary()(PREDICT_M, timeout=10) == ANSWER
        assert scripted.requests == [1, 1]


@pytest.mark.parametrize(("code", "expected"), [(frames.CANCEL, grpc.StatusCode.CANCELLED),
                                                (frames.INTERNAL_ERROR, grpc.StatusCode.INTERNAL)])
async def test_an_upstream_reset_ends_the_call_as_grpc_clients_map_it(code: int, expected: grpc.StatusCode) -> None:
    async def reset(peer: RawPeer, stream_id: int, connection: int) -> None:
        peer.send(frames.rst_stream(stream_id, code))

    async with scripted_upstream(reset) as scripted, relay_to(scripted.port) as proxied:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await proxied.unary()(PREDICT_M, timeout=10)
        assert caught.value.code() is expected
        assert "x-prediction-id" in dict(caught.value.initial_metadata())
        assert proxied.metrics.requests == {("m", "3", "grpc", "predict", expected.name): 1}


async def test_an_http_error_answer_reaches_the_client_as_grpc_maps_it() -> None:
    async def unavailable(peer: RawPeer, stream_id: int, connection: int) -> None:
        peer.send(peer.headers(stream_id, ((b":status", b"503"), (b"content-type", b"text/plain")), end_stream=True))

    async with scripted_upstream(unavailable) as scripted, relay_to(scripted.port) as proxied:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await proxied.unary()(PREDICT_M, timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        assert proxied.metrics.requests == {("m", "3", "grpc", "predict", "UNAVAILABLE"): 1}


async def test_an_upstream_that_answers_without_status_is_an_internal_error() -> None:
    async def no_trailers(peer: RawPeer, stream_id: int, connection: int) -> None:
        peer.send(peer.headers(stream_id, ((b":status", b"200"), (b"content-type", b"application/grpc"))),
                  frames.frame(frames.DATA, frames.END_STREAM, stream_id, framed(ANSWER)))

    async with scripted_upstream(no_trailers) as scripted, relay_to(scripted.port) as proxied:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await proxied.unary()(PREDICT_M, timeout=10)
        assert caught.value.code() is grpc.StatusCode.INTERNAL
        assert "without a status" in (caught.value.details() or "")


# --- what HTTP/2 clients may do -------------------------------------------------------------------------------

async def test_frames_split_into_single_bytes_are_put_back_together(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        assert proxied.proxy.port is not None
        peer = await RawPeer.connect(proxied.proxy.port)
        try:
            request = peer.headers(1, GRPC_REQUEST) + frames.frame(frames.DATA, frames.END_STREAM, 1, framed(b"bit"))
            for byte in range(len(request)):
                peer.send(request[byte:byte + 1])
                await peer.writer.drain()
            reply = await peer.reply(1)
        finally:
            await peer.close()
    assert reply.status == b"0" and reply.data == framed(b"echo:bit")
    assert reply.headers[0][b"x-upstream"] == b"yes" and b"x-prediction-id" in reply.headers[0]


async def test_requests_that_are_not_grpc_get_an_http_error_and_the_connection_goes_on(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        assert proxied.proxy.port is not None
        peer = await RawPeer.connect(proxied.proxy.port)
        try:
            get = tuple((b":method", b"GET") if name == b":method" else (name, value) for name, value in GRPC_REQUEST)
            peer.send(peer.headers(1, get, end_stream=True))
            rejected = await peer.reply(1)
            peer.send(peer.headers(3, GRPC_REQUEST), frames.frame(frames.DATA, frames.END_STREAM, 3, framed(b"ok")))
            accepted = await peer.reply(3)
        finally:
            await peer.close()
    assert rejected.headers[0][b":status"] == b"405" and rejected.status == b"13"
    assert accepted.status == b"0" and accepted.data == framed(b"echo:ok")
    assert len(upstream.calls) == 1


async def test_garbage_instead_of_http2_ends_only_that_connection(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        assert proxied.proxy.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", proxied.proxy.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)  # the relay says GOAWAY and closes
        writer.close()
        assert rest[3] == frames.SETTINGS and frames.GOAWAY in rest
        assert await proxied.unary()(b"still", timeout=10) == b"echo:still"


async def test_a_unary_call_with_two_request_messages_is_refused(upstream: Upstream) -> None:
    async with relay_to(upstream.port) as proxied:
        assert proxied.proxy.port is not None
        peer = await RawPeer.connect(proxied.proxy.port)
        try:
            peer.send(peer.headers(1, GRPC_REQUEST),
                      frames.frame(frames.DATA, frames.END_STREAM, 1, framed(b"one") + framed(b"two")))
            reply = await peer.reply(1)
        finally:
            await peer.close()
    assert reply.status == b"13" and upstream.calls == []


# --- lifecycle ------------------------------------------------------------------------------------------------

async def test_stop_lets_a_running_call_finish_within_the_grace_period(upstream: Upstream) -> None:
    records: list[CaptureRecord] = []
    async with relay_to(upstream.port, capture=records.append) as proxied:
        call = proxied.unary()(PREDICT_M, metadata=(("x-test-sleep", "0.3"),), timeout=10)
        while not upstream.calls:
            await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(proxied.proxy.stop(grace=5.0))
        assert await call == b"echo:" + PREDICT_M
        await stopping
    assert [record.status for record in records] == [0]
