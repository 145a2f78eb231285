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
    rest_header_timeout: float = option(
        20.0, "seconds a REST client has to send a request line and header fields, from the request's first byte "
              "(from connecting, for its first request); slower: 408 and the connection closes",
        parse_duration(minimum=0.001))
    rest_body_timeout: float = option(
        60.0, "seconds a REST request body has to arrive in full after its header fields (a stall that long fails "
              "too); slower: 408 and the connection closes", parse_duration(minimum=0.001))
    rest_idle_timeout: float = option(
        75.0, "seconds a REST keep-alive connection may wait for its next request before it is closed (quietly)",
        parse_duration(minimum=0.001))
    rest_send_timeout: float = option(
        60.0, "seconds a REST client may take none of the response bytes waiting for it (it does not read) before "
              "its connection is aborted", parse_duration(minimum=0.001))
    rest_max_connections: int = option(
        4096, "open REST client connections; one more is answered 503 'too many connections' and closed",
        parse_int(1, 1_000_000))
    rest_stream_idle_timeout: float = option(
        30.0, "seconds a streamed REST response (chunked, text/event-stream, or ended by the upstream closing) may "
              "go without a byte from the upstream before it is cut (the client sees its connection close); the "
              "upstream timeout then bounds only the wait for the response head", parse_duration(minimum=0.001))
    rest_stream_buffer_bytes: int = option(
        64 * 1024, "response bytes queued to a REST client above which a streamed response stops reading from the "
                   "upstream (until below a quarter)", parse_size(minimum=4 * 1024))
    rest_stream_capture_bytes: int = option(
        1024**2, "bytes of a streamed REST response kept for the analysis; beyond, the capture record is marked "
                 "truncated (whole, non-streamed answers are captured whole)", parse_size(minimum=0))
    proxy_processes: int = option(1, "processes accepting and forwarding requests on the same ports (SO_REUSEPORT; "
                                  "the kernel spreads connections over them); the analysis, feedback store and admin "
                                  "listener stay in the main process, which merges their metrics",
                                  parse_int(1, 64))
    grpc_engine: str = option("h2", "gRPC proxy engine: h2 (asyncio HTTP/2 relay, fast) or aio (grpc.aio)",
                              parse_choice(*GRPC_ENGINES))
    # Limits of the h2 relay's client connections (sidecar/proxy/grpc/h2/limits.py); each one reached is counted in
    # sidecar_h2_limit_events_total{limit=...}.
    h2_max_concurrent_streams: int = option(
        128, "h2 relay: concurrent streams per client connection, advertised in SETTINGS; more are refused "
             "(RST_STREAM REFUSED_STREAM)", parse_int(1, 2**31 - 1))
    h2_max_resets: int = option(
        500, "h2 relay: streams a client may reset while running (or have refused) per --h2-flood-window when they "
             "are over half the streams it opened; beyond: GOAWAY ENHANCE_YOUR_CALM", parse_int(1))
    h2_max_control_frames: int = option(
        1000, "h2 relay: SETTINGS, PING, PRIORITY, WINDOW_UPDATE and other control frames a client may send per "
              "--h2-flood-window without the relay sending it HEADERS or DATA; beyond: GOAWAY ENHANCE_YOUR_CALM",
        parse_int(1))
    h2_max_empty_frames: int = option(
        10, "h2 relay: empty DATA/HEADERS/CONTINUATION frames (no payload, no END_STREAM) a client may send in a "
            "row; beyond: GOAWAY ENHANCE_YOUR_CALM", parse_int(0))
    h2_flood_window: float = option(10.0, "h2 relay: the window --h2-max-resets and --h2-max-control-frames count in",
                                    parse_duration(0.001))
    h2_max_header_block_bytes: int = option(
        64 * 1024, "h2 relay: largest request header block (HEADERS + CONTINUATION, compressed); larger: GOAWAY "
                   "ENHANCE_YOUR_CALM", parse_size(minimum=1024))
    h2_write_buffer_bytes: int = option(
        1024 * 1024, "h2 relay: bytes queued to a client connection above which the relay stops reading from it "
                     "(until below a quarter)", parse_size(minimum=16 * 1024))
    h2_max_connection_buffered_bytes: int = option(
        128 * 1024**2, "h2 relay: request bytes the calls of one client connection may buffer before their requests "
                       "are complete and taken upstream; beyond: RESOURCE_EXHAUSTED", parse_size())
    h2_max_total_buffered_bytes: int = option(
        512 * 1024**2, "h2 relay: request bytes all client connections together may buffer; beyond: "
                       "RESOURCE_EXHAUSTED", parse_size())
    h2_preface_timeout: float = option(
        10.0, "h2 relay: seconds a new client connection has to send the HTTP/2 preface and SETTINGS",
        parse_duration(0.001))
    h2_idle_timeout: float = option(
        180.0, "h2 relay: seconds a client connection may stay without running calls, or without taking our writes, "
               "before it is closed (0: never)", parse_duration(0.0))
    h2_max_connections: int = option(
        4096, "h2 relay: open client connections on the gRPC port; one more gets GOAWAY and is closed",
        parse_int(1, 1_000_000))
