"""The grpc.aio engine: a grpc.aio server whose one generic handler forwards every method to the model server.

Known unary methods (TF Serving's PredictionService and ModelService, the Open Inference Protocol's
GRPCInferenceService) take the unary fast path (`unary`); every other path is relayed as a bidirectional stream
(`stream`). Messages are never decoded: handlers and the upstream channel have no (de)serializers. One channel to
the upstream is shared by all calls; both sides accept messages up to `settings.grpc_max_message_bytes`.
"""

from __future__ import annotations

import logging

import grpc

from sidecar.proxy.grpc.aio.forwarding import Forwarding
from sidecar.proxy.grpc.aio.stream import stream_handler
from sidecar.proxy.grpc.aio.unary import unary_handler
from sidecar.proxy.grpc.exchange import Capture
from sidecar.proxy.grpc.methods import KNOWN_METHODS, GrpcMethod, describe
from sidecar.proxy.grpc.target import grpc_target
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing

__all__ = ["AioGrpcProxy", "channel_options", "server_options"]

log = logging.getLogger(__name__)

MAX_CACHED_UNKNOWN_METHODS = 256  # handlers for unknown paths are cached up to this many, then built per call


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Fail loudly when the port is taken instead of silently sharing it with another process.
        ("grpc.so_reuseport", 0),
    ]


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Reconnect quickly when the model server restarts (gRPC's default backoff grows to 120 s, during which
        # every call would fail fast with UNAVAILABLE).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


class _Router(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Maps every method path to a forwarding handler (known paths prebuilt, unknown ones cached up to a bound)."""

    def __init__(self, forwarding: Forwarding) -> None:
        self._forwarding = forwarding
        self._handlers: dict[str, grpc.RpcMethodHandler] = {
            path: self._build(method) for path, method in KNOWN_METHODS.items()}
        self._known = len(self._handlers)

    def _build(self, method: GrpcMethod) -> grpc.RpcMethodHandler:
        if method.unary:
            return unary_handler(self._forwarding, method)
        return stream_handler(self._forwarding, method)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path: str = handler_call_details.method
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._build(describe(path))
            if len(self._handlers) - self._known < MAX_CACHED_UNKNOWN_METHODS:
                self._handlers[path] = handler
        return handler


class AioGrpcProxy:
    """Forwards every gRPC call from `settings.listen_grpc` to `settings.upstream_grpc` as raw bytes (grpc.aio)."""

    def __init__(self, settings: ProxySettings, *, capture: Capture | None, metrics: RequestMetrics,
                 tracing: Tracing, health: UpstreamHealth | None = None) -> None:
        if settings.listen_grpc is None or settings.upstream_grpc is None:
            raise ValueError("the gRPC proxy needs both listen_grpc and upstream_grpc")
        self.settings = settings
        self.listen_address = grpc_target(settings.listen_grpc)
        self.upstream_target = grpc_target(settings.upstream_grpc)
        self._capture = capture
        self._metrics = metrics
        self._tracing = tracing
        self._health = health
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Open the upstream channel (connecting right away) and start listening; OSError if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the gRPC proxy is already started")
        size = self.settings.grpc_max_message_bytes
        channel = grpc.aio.insecure_channel(self.upstream_target, options=channel_options(size))
        forwarding = Forwarding(self.upstream_target, self.settings.upstream_timeout, self._capture, self._metrics,
                                self._tracing, self._health, channel=channel)
        server = grpc.aio.server(options=server_options(size))
        server.add_generic_rpc_handlers((_Router(forwarding),))
        try:
            port = server.add_insecure_port(self.listen_address)
        except RuntimeError:
            port = 0
        if not port:
            await channel.close()
            raise OSError(f"cannot listen for gRPC on {self.listen_address}: address in use or not available")
        await server.start()
        channel.get_state(try_to_connect=True)  # connect now so the first call does not wait for it
        self._server, self._channel, self.port = server, channel, port
        log.info("gRPC proxy (grpc.aio) listening on %s (port %d), forwarding to %s", self.listen_address, port,
                 self.upstream_target)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let running ones finish for up to `grace` seconds, then close the channel."""
        server, channel = self._server, self._channel
        self._server = self._channel = None
        if server is not None:
            await server.stop(grace)
        if channel is not None:
            await channel.close()
