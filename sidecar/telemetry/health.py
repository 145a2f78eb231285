"""Upstream readiness: a background probe that answers /readyz and lets the proxies choose 503 over 502."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)
Probe = Callable[[], Awaitable[bool]]


class UpstreamHealth:
    """Holds the latest verdict of each probe; `ready` is True only while every probe passed last time."""

    def __init__(self, probes: dict[str, Probe], interval: float) -> None:
        self.probes = probes
        self.interval = interval
        self.state: dict[str, bool] = dict.fromkeys(probes, False)
        self._reported: dict[str, bool | None] = dict.fromkeys(probes, None)  # what the log said last
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return all(self.state.values())

    def mark(self, name: str, ok: bool) -> None:
        """Proxies report what they just saw (e.g. a refused connection) so readiness reacts between probes."""
        if name in self.state:
            self.state[name] = ok

    async def check(self) -> bool:
        for name, probe in self.probes.items():
            try:
                self.state[name] = await asyncio.wait_for(probe(), timeout=max(self.interval, 1.0))
            except Exception:
                self.state[name] = False
            self._report(name)
        return self.ready

    def _report(self, name: str) -> None:
        """One log line per change of an upstream's verdict (seen by a probe), never one per request."""
        up, before = self.state[name], self._reported[name]
        if up == before:
            return
        self._reported[name] = up
        if up:
            log.info("%s upstream is up", name)
        else:
            log.warning("%s upstream is %s", name, "not answering" if before is None else "down: not answering")

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="upstream-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def tcp_http_probe(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an HTTP server answers `GET /v1/models/__sidecar_probe__` with any status line.

    Any HTTP answer (TF Serving gives 404 for an unknown model) proves the server is up and serving REST.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(b"GET /v1/models/__sidecar_probe__ HTTP/1.1\r\nHost: " + host.encode()
                     + b"\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"HTTP/1.")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
_H2_GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8)  # last stream 0, NO_ERROR
_SETTINGS_TYPE = 4


async def h2_probe(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an HTTP/2 server (a gRPC server) answers the connection preface with its SETTINGS frame: what a gRPC
    channel waits for before it is ready, without loading grpcio."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(_H2_PREFACE + _H2_SETTINGS)
        await writer.drain()
        header = await asyncio.wait_for(reader.readexactly(9), timeout)
        ready = header[3] == _SETTINGS_TYPE and header[5:9] == b"\x00\x00\x00\x00"
        if ready:
            writer.write(_H2_GOAWAY)
        return ready
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class UpstreamMetrics:
    """`sidecar_upstream_up{protocol}`: 1 while the model server answers the readiness probe, else 0 (an alert can
    fire for a dead model server that gets no traffic)."""

    def __init__(self, health: UpstreamHealth) -> None:
        self.health = health

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("sidecar_upstream_up", "1 while the model server answers the readiness probe.",
                                  labels=["protocol"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("sidecar_upstream_up", "1 while the model server answers the readiness probe.",
                                   labels=["protocol"])
        for protocol, up in sorted(self.health.state.items()):
            family.add_metric([protocol], 1.0 if up else 0.0)
        yield family
