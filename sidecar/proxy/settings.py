"""Settings of the REST and gRPC proxies."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.options import (
    option,
    parse_choice,
    parse_duration,
    parse_hostport,
    parse_http_url,
    parse_int,
    parse_size,
)

GRPC_ENGINES = ("h2", "aio")


@dataclass(frozen=True)
class ProxySettings:
    upstream_rest: tuple[str, int] | None = option(
        ("127.0.0.1", 9501), "TF Serving REST base URL (http://HOST:PORT), or off", parse_http_url(allow_off=True))
    upstream_grpc: tuple[str, int] | None = option(
        ("127.0.0.1", 9500), "TF Serving gRPC address HOST:PORT, or off", parse_hostport(allow_off=True))
    listen_rest: tuple[str, int] | None = option(
        ("0.0.0.0", 8501), "REST listen address HOST:PORT, or off", parse_hostport(allow_off=True))
    listen_grpc: tuple[str, int] | None = option(
        ("0.0.0.0", 8500), "gRPC listen address HOST:PORT, or off", parse_hostport(allow_off=True))
    upstream_timeout: float = option(30.0, "seconds to wait for the upstream's answer (REST 504 after it)",
                                     parse_duration(minimum=0.001))
    connect_timeout: float = option(5.0, "seconds to wait for a connection to the upstream", parse_duration(0.001))
    max_body_bytes: int = option(64 * 1024**2, "largest REST request body accepted (larger: 413)", parse_size())
    grpc_max_message_bytes: int = option(64 * 1024**2, "largest gRPC message either way, on both sides",
                                         parse_size(minimum=4 * 1024**2))
    upstream_pool_size: int = option(64, "idle keep-alive connections kept to the REST upstream", parse_int(1, 4096))
    grpc_engine: str = option("h2", "gRPC proxy engine: h2 (asyncio HTTP/2 relay, fast) or aio (grpc.aio)",
                              parse_choice(*GRPC_ENGINES))
