"""The gRPC proxy as an HTTP/2 relay on asyncio: gRPC calls forwarded frame by frame, without grpcio.

    proxy = H2GrpcProxy(settings.proxy, capture=ring.append, metrics=metrics, tracing=tracing, health=health)
    await proxy.start()          # listens on settings.listen_grpc (port 0 picks one: proxy.port)
    ...
    await proxy.stop(grace=5.0)

Same behaviour as the grpc.aio engine (`sidecar.proxy.grpc.aio`), at a fraction of its cost per call: grpc.aio
spends about half a millisecond of CPU and several thread hops per forwarded call, while this relay parses
HTTP/2 frames in the event loop, decodes header blocks with a caching HPACK decoder and never touches message
bytes beyond their 5-byte prefixes. Modules: `frames` (frame bytes), `hpack` (header blocks),
`endpoint` (one connection: settings, pings, flow control), `server` (client connections), `upstream`
(the model-server connection), `call` (one call: the gRPC rules), `wire` (timeouts, statuses, messages),
`limits` (what a client connection may do: streams, resets, floods, buffers, timeouts).

Limits reached are counted in `proxy.limit_events` (limit name -> count); the app exports them as
`sidecar_limit_events_total{protocol="grpc", limit=...}` (`sidecar.telemetry.metrics.LimitMetrics`).
`proxy.buffered_request_bytes` and `proxy.queued_bytes()` tell what the client connections hold right now.
"""

from __future__ import annotations

import asyncio
import logging

from sidecar.proxy.deadlines import Deadlines
from sidecar.proxy.grpc.exchange import Capture, Recording
from sidecar.proxy.grpc.h2.call import Relay
from sidecar.proxy.grpc.h2.endpoint import WriteBatch
from sidecar.proxy.grpc.h2.limits import H2Limits, RequestBuffers, new_limit_events
from sidecar.proxy.grpc.h2.server import H2ClientConnection
from sidecar.proxy.grpc.h2.upstream import H2UpstreamPool
from sidecar.proxy.grpc.target import grpc_target
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing

__all__ = ["H2GrpcProxy", "H2Limits"]

log = logging.getLogger(__name__)

DEADLINE_TICK_SECONDS = 0.02
STOP_POLL_SECONDS = 0.02


class H2GrpcProxy:
    """Forwards every gRPC call from `settings.listen_grpc` to `settings.upstream_grpc`, frame by frame."""

    def __init__(self, settings: ProxySettings, *, capture: Capture | None, metrics: RequestMetrics,
                 tracing: Tracing, health: UpstreamHealth | None = None) -> None:
        if settings.listen_grpc is None or settings.upstream_grpc is None:
            raise ValueError("the gRPC proxy needs both listen_grpc and upstream_grpc")
        self.settings = settings
        self.listen_address = grpc_target(settings.listen_grpc)
        self.upstream_target = grpc_target(settings.upstream_grpc)
        self._recording = Recording(self.upstream_target, settings.upstream_timeout, capture, metrics, tracing, health)
        self._server: asyncio.AbstractServer | None = None
        self._relay: Relay | None = None
        self._connections: set[H2ClientConnection] = set()
        self.port: int | None = None
        self.limits = H2Limits.from_settings(settings)
        self.limit_events: dict[str, int] = new_limit_events()
        self._buffers = RequestBuffers(self.limits, self.limit_events)

    @property
    def buffered_request_bytes(self) -> int:
        """Request bytes the calls of all client connections hold before their requests are complete."""
        return self._buffers.total

    @property
    def peak_buffered_request_bytes(self) -> int:
        """The most `buffered_request_bytes` has been since the proxy was made."""
        return self._buffers.peak

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    def queued_bytes(self) -> int:
        """Bytes waiting to go to clients, over all client connections."""
        return sum(connection.queued_bytes() for connection in self._connections)

    def connection(self) -> H2ClientConnection:
        """A client connection of the running relay, to drive without a socket: call its `connection_made` with a
        transport, then feed it bytes with `data_received` (tests and fuzzing)."""
        if self._relay is None:
            raise RuntimeError("the gRPC proxy is not started")
        return H2ClientConnection(self._relay, self._connections, self._relay.batch)

    async def start(self) -> None:
        """Connect to the upstream (in the background) and start listening; OSError if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the gRPC proxy is already started")
        settings = self.settings
        assert settings.listen_grpc is not None and settings.upstream_grpc is not None
        loop = asyncio.get_running_loop()
        batch = WriteBatch()
        pool = H2UpstreamPool(*settings.upstream_grpc, settings.connect_timeout, batch)
        relay = Relay(self._recording, self.upstream_target, settings.grpc_max_message_bytes,
                      Deadlines(loop, DEADLINE_TICK_SECONDS), pool, batch, loop, self.limits, self.limit_events,
                      self._buffers)
        connections = self._connections
        host, port = settings.listen_grpc
        try:
            server = await loop.create_server(lambda: H2ClientConnection(relay, connections, batch), host, port,
                                              reuse_port=settings.proxy_processes > 1 or None)
        except OSError as exc:
            await pool.close()
            raise OSError(exc.errno, f"cannot listen for gRPC on {self.listen_address}: "
                                     f"{exc.strerror or 'address in use or not available'}") from exc
        self._server, self._relay = server, relay
        self.port = int(server.sockets[0].getsockname()[1])
        pool.connect()  # connect now so the first call does not wait for it
        log.info("gRPC proxy (h2 relay) listening on %s:%d, forwarding to %s", host, self.port, self.upstream_target)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let running ones finish for up to `grace` seconds, then close every connection."""
        server, relay = self._server, self._relay
        self._server = self._relay = None
        if server is None or relay is None:
            return
        server.close()
        connections = self._connections
        for connection in list(connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        while any(connection.calls for connection in connections) and loop.time() < deadline:
            await asyncio.sleep(STOP_POLL_SECONDS)
        for connection in list(connections):
            connection.cancel_calls()
            connection.close()
        connections.clear()
        await relay.pool.close()
        relay.deadlines.close()
        await server.wait_closed()
