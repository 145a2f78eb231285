"""The gRPC reverse proxy, in one of two engines chosen by `settings.grpc_engine`.

    proxy = GrpcProxy(settings.proxy, capture=ring.append, metrics=metrics, tracing=tracing, health=health)
    await proxy.start()          # listens on settings.listen_grpc (port 0 picks one: proxy.port)
    ...
    await proxy.stop(grace=5.0)

`h2` (the default) is an HTTP/2 relay on asyncio (`sidecar.proxy.grpc.h2`); `aio` is the grpc.aio engine
(`sidecar.proxy.grpc.aio`): a grpc.aio server whose one generic handler forwards every method to the model
server. Both behave the same; the relay costs far less per call. Each engine is imported only when chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.proxy.grpc.exchange import Capture
from sidecar.proxy.settings import ProxySettings
from sidecar.telemetry.health import UpstreamHealth
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import Tracing

if TYPE_CHECKING:
    from sidecar.proxy.grpc.aio.proxy import AioGrpcProxy
    from sidecar.proxy.grpc.h2.relay import H2GrpcProxy

__all__ = ["GrpcProxy"]


class GrpcProxy:
    """The gRPC proxy of the engine `settings.grpc_engine` names; `start`, `stop` and `port` as documented above."""

    def __init__(self, settings: ProxySettings, *, capture: Capture | None, metrics: RequestMetrics,
                 tracing: Tracing, health: UpstreamHealth | None = None) -> None:
        engine: AioGrpcProxy | H2GrpcProxy
        if settings.grpc_engine == "aio":
            from sidecar.proxy.grpc.aio.proxy import AioGrpcProxy

            engine = AioGrpcProxy(settings, capture=capture, metrics=metrics, tracing=tracing, health=health)
        else:
            from sidecar.proxy.grpc.h2.relay import H2GrpcProxy

            engine = H2GrpcProxy(settings, capture=capture, metrics=metrics, tracing=tracing, health=health)
        self.engine = engine

    @property
    def port(self) -> int | None:
        return self.engine.port

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self, grace: float = 5.0) -> None:
        await self.engine.stop(grace)
