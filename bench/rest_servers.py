"""Servers the REST benchmark runs, each in its own process: `python bench/rest_servers.py KIND [options]`.

KIND is one of
- `upstream`: an instant-answer model-server stand-in (uvloop + httptools), used when nginx is not installed;
- `sidecar`: the real RestProxy under uvloop, capturing into a shared capture ring as `sidecar run` does with
  analysis on (`discard_all` stands in for the worker that would read it);
- `aiohttp`: the baseline, a plain aiohttp web server forwarding through one aiohttp ClientSession;
- `byte-relay`: a reference, a bare uvloop byte relay (one upstream connection per client connection, no parsing,
  no headers added): what any Python forwarder costs at the least. `--busy-us N --busy-when before|after` makes
  it spin N us before or after each of its writes, which shows what a forwarder's own work costs in latency on
  this machine (on a VM whose idle vCPUs halt at once, work before a write costs more than its duration).
Each prints `PORT <n>` on stdout once it listens, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from sidecar.capture.shared_ring import SharedRingWriter
    from sidecar.messages.records import CaptureRecord

ANSWER = b'{"predictions": [[0.12, 0.34, 0.54]]}'


def _announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


class _InstantUpstream(asyncio.Protocol):
    """Answers every request with the same small JSON body (keep-alive), `delay` seconds after it arrived."""

    delay = 0.0

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(self.response)


async def run_upstream(port: int, delay: float) -> None:
    _InstantUpstream.delay = delay
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_InstantUpstream, "127.0.0.1", port, backlog=1024)
    _announce(server.sockets[0].getsockname()[1])
    await _until_signalled()


def shared_ring() -> SharedRingWriter:
    """The analysis capture ring at `sidecar run`'s defaults (one worker)."""
    from sidecar.capture.settings import CaptureSettings
    from sidecar.capture.shared_ring import SharedRingWriter

    settings = CaptureSettings()
    return SharedRingWriter(settings.capture_max_bytes, settings.capture_max_records, settings.capture_batch_size)


def discard_all(ring: SharedRingWriter) -> int:
    """Free the ring as if a worker had read everything in it; the records freed."""
    freed = 0
    while ring.unpublished:
        _, end, records = ring.publish()
        ring.release(end, records)
        freed += records
    return freed


async def run_sidecar(port: int, upstream: tuple[str, int]) -> None:
    from sidecar.proxy.rest.proxy import RestProxy
    from sidecar.proxy.settings import ProxySettings
    from sidecar.telemetry.metrics import RequestMetrics
    from sidecar.telemetry.tracing import disabled

    ring = shared_ring()
    freed = 0

    def capture(record: CaptureRecord) -> None:
        ring.append(record)

    proxy = RestProxy(ProxySettings(upstream_rest=upstream, listen_rest=("127.0.0.1", port)),
                      capture=capture, metrics=RequestMetrics(), tracing=disabled())
    await proxy.start()
    _announce(proxy.port)
    stop = asyncio.ensure_future(_until_signalled())
    while not stop.done():
        await asyncio.wait([stop], timeout=0.05)
        freed += discard_all(ring)
    await proxy.stop()
    print(f"captured {freed + ring.records} records", file=sys.stderr, flush=True)


class _Busy:
    """Spins `seconds` before or after each of the relay's writes (0: the plain relay)."""

    seconds = 0.0
    before = True

    @classmethod
    def write(cls, transport: asyncio.Transport, data: bytes) -> None:
        if cls.seconds and cls.before:
            _spin(cls.seconds)
        transport.write(data)
        if cls.seconds and not cls.before:
            _spin(cls.seconds)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _RelayUpstream(asyncio.Protocol):
    def __init__(self, client: _RelayClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client.attach(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            _Busy.write(self.client.transport, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _RelayClient(asyncio.Protocol):
    """Bytes from the client go to its own upstream connection and back, untouched."""

    upstream_address: tuple[str, int] = ("127.0.0.1", 9501)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.connecting: asyncio.Task[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(loop.create_connection(lambda: _RelayUpstream(self),
                                                                  *self.upstream_address))

    def attach(self, upstream: asyncio.Transport) -> None:
        self.upstream = upstream
        for data in self.pending:
            upstream.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            _Busy.write(self.upstream, data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def run_byte_relay(port: int, upstream: tuple[str, int]) -> None:
    _RelayClient.upstream_address = upstream
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_RelayClient, "127.0.0.1", port, backlog=1024)
    _announce(server.sockets[0].getsockname()[1])
    await _until_signalled()


async def run_aiohttp(port: int, upstream: tuple[str, int]) -> None:
    import aiohttp
    from aiohttp import web

    base = f"http://{upstream[0]}:{upstream[1]}"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with session.request(request.method, base + request.path_qs, data=body,
                                   headers={k: v for k, v in request.headers.items()
                                            if k.lower() not in ("host", "content-length")}) as upstream_response:
            payload = await upstream_response.read()
            return web.Response(status=upstream_response.status, body=payload,
                                content_type=upstream_response.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    _announce(runner.addresses[0][1])
    await _until_signalled()
    await runner.cleanup()
    await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("upstream", "sidecar", "aiohttp", "byte-relay"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", default="127.0.0.1:9501", help="HOST:PORT of the model server")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="upstream: answer this much later")
    parser.add_argument("--busy-us", type=float, default=0.0, help="byte-relay: spin this long at each write")
    parser.add_argument("--busy-when", choices=("before", "after"), default="before",
                        help="byte-relay: spin before or after each write")
    args = parser.parse_args()
    host, _, port_text = args.upstream.rpartition(":")
    upstream = (host, int(port_text))
    if args.kind == "upstream":
        main_coro = run_upstream(args.port, args.delay_ms / 1000)
    elif args.kind == "sidecar":
        main_coro = run_sidecar(args.port, upstream)
    elif args.kind == "byte-relay":
        _Busy.seconds, _Busy.before = args.busy_us / 1e6, args.busy_when == "before"
        main_coro = run_byte_relay(args.port, upstream)
    else:
        main_coro = run_aiohttp(args.port, upstream)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main_coro)
    else:
        asyncio.run(main_coro)


if __name__ == "__main__":
    main()
