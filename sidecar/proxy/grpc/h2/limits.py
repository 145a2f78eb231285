"""The limits of the relay's client connections, without I/O: budgets that say when a peer has gone too far.

Every limit has a default, a setting (`ProxySettings.h2_*`) and a counter: each time one is reached,
`limit_events[name]` goes up by one (exported as `sidecar_limit_events_total{protocol="grpc", limit=name}`). The
defaults follow servers people trust:

- concurrent streams: 128 per connection, advertised in SETTINGS (nginx `http2_max_concurrent_streams`); a stream
  beyond it gets RST_STREAM(REFUSED_STREAM), which gRPC clients retry.
- resets: streams a client resets while they run, or has refused or rejected, at most `max_resets` per
  `flood_window` unless they are at most half the streams it opened then (Envoy's premature-reset rule, CVE-2023-44487
  "rapid reset"); beyond: GOAWAY(ENHANCE_YOUR_CALM).
- control frames: SETTINGS, PING, PRIORITY, WINDOW_UPDATE, RST_STREAM of a stream not running, GOAWAY and unknown
  frames, at most `max_control_frames` per `flood_window` while the relay sends no HEADERS or DATA on the connection
  (frames that answer the relay's output are earned, as gRPC's ping policy and Envoy's WINDOW_UPDATE ratio have it).
- empty frames: DATA without payload or END_STREAM, HEADERS or CONTINUATION without a header block fragment, at most
  `max_empty_frames` in a row (Envoy's `max_consecutive_inbound_frames_with_empty_payload`).
- header blocks: HEADERS + CONTINUATION beyond `max_header_block_bytes` end the connection (the 2024 CONTINUATION
  flood advisories, CERT VU#421644).
- write buffer: a client connection with more than `write_buffer_bytes` queued for the socket is not read from
  until it is below a quarter of it (so SETTINGS and PING acknowledgements to a peer that does not read cannot pile
  up), and upstream windows for its calls are not reopened meanwhile.
- buffered request bytes: what calls hold of requests not yet complete (or not yet taken by the model server), per
  connection and across connections; a call that would pass either ends with RESOURCE_EXHAUSTED.
- preface timeout: the client preface and its SETTINGS must arrive within `preface_timeout`.
- idle timeout: a connection without running calls, or that has not taken our writes, for `idle_timeout` is closed.
- connections: at most `max_connections` client connections at once; one more gets GOAWAY and is closed.
- request timeout: a call's deadline (`grpc-timeout`) runs from its headers, not from the end of its request.

`ConnectionGuard` is the per-connection bookkeeping of the budgets: the connection tells it what arrived (and when)
and it answers whether a budget is spent, counting the event; it can be driven and fuzzed without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.proxy.settings import ProxySettings

__all__ = ["LIMITS", "ConnectionGuard", "H2Limits", "RequestBuffers", "new_limit_events"]

# The `limit` label values: a fixed set, so the counter's cardinality is bounded.
CONCURRENT_STREAMS = "concurrent_streams"  # a stream refused beyond SETTINGS_MAX_CONCURRENT_STREAMS
RESETS = "resets"  # GOAWAY: too many streams reset, refused or rejected
CONTROL_FRAMES = "control_frames"  # GOAWAY: too many control frames
EMPTY_FRAMES = "empty_frames"  # GOAWAY: too many empty frames in a row
HEADER_BLOCK = "header_block"  # GOAWAY: a header block over its size bound
WRITE_BUFFER = "write_buffer"  # reading paused: the peer does not take what is written to it
CONNECTION_BUFFER = "connection_buffered_bytes"  # a call refused: its connection buffers too many request bytes
TOTAL_BUFFER = "total_buffered_bytes"  # a call refused: all connections together buffer too many request bytes
PREFACE_TIMEOUT = "preface_timeout"  # closed: no client preface and SETTINGS in time
IDLE_TIMEOUT = "idle_timeout"  # closed: no running call for the idle timeout
WRITE_TIMEOUT = "write_timeout"  # closed: the peer took none of our writes for the idle timeout
REQUEST_TIMEOUT = "request_timeout"  # a call ended: its request was not complete at its deadline
CONNECTIONS = "connections"  # a connection refused: too many open
LIMITS: tuple[str, ...] = (CONCURRENT_STREAMS, RESETS, CONTROL_FRAMES, EMPTY_FRAMES, HEADER_BLOCK, WRITE_BUFFER,
                           CONNECTION_BUFFER, TOTAL_BUFFER, PREFACE_TIMEOUT, IDLE_TIMEOUT, WRITE_TIMEOUT,
                           REQUEST_TIMEOUT, CONNECTIONS)

UNLIMITED = 2**62


@dataclass(frozen=True, slots=True)
class H2Limits:
    """The limit values (see `ProxySettings` for their meaning and defaults)."""

    max_concurrent_streams: int = 128
    max_resets: int = 500
    max_control_frames: int = 1000
    max_empty_frames: int = 10
    flood_window: float = 10.0
    max_header_block_bytes: int = 64 * 1024
    write_buffer_bytes: int = 1024 * 1024
    max_connection_buffered_bytes: int = 128 * 1024**2
    max_total_buffered_bytes: int = 512 * 1024**2
    preface_timeout: float = 10.0
    idle_timeout: float = 180.0  # 0: no idle timeout
    max_connections: int = 4096

    @classmethod
    def from_settings(cls, settings: ProxySettings) -> H2Limits:
        return cls(settings.h2_max_concurrent_streams, settings.h2_max_resets, settings.h2_max_control_frames,
                   settings.h2_max_empty_frames, settings.h2_flood_window, settings.h2_max_header_block_bytes,
                   settings.h2_write_buffer_bytes, settings.h2_max_connection_buffered_bytes,
                   settings.h2_max_total_buffered_bytes, settings.h2_preface_timeout, settings.h2_idle_timeout,
                   settings.h2_max_connections)


# The relay's own connection to the model server is trusted: it gets budgets that are never spent.
UPSTREAM_LIMITS = H2Limits(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED, 1.0, 256 * 1024, UNLIMITED, UNLIMITED,
                           UNLIMITED, 0.0, 0.0, UNLIMITED)


def new_limit_events() -> dict[str, int]:
    """A counter per limit, all at zero."""
    return dict.fromkeys(LIMITS, 0)


class ConnectionGuard:
    """The flood budgets of one connection.

    The connection reports frames as it parses them; a method that returns True means the budget is spent (the event
    is counted) and the connection must end with GOAWAY(ENHANCE_YOUR_CALM). `control` and `empty` are plain counters
    the connection resets itself on its hot path: `control = 0` whenever it sends HEADERS or DATA, `empty = 0` whenever
    a frame carries payload.
    """

    __slots__ = ("control", "control_since", "empty", "events", "limits", "opened", "resets", "resets_since")

    def __init__(self, limits: H2Limits, events: dict[str, int]) -> None:
        self.limits = limits
        self.events = events
        self.control = 0  # control frames since the window began or the relay last sent HEADERS or DATA
        self.control_since = -1e18
        self.empty = 0  # empty frames in a row
        self.opened = 0  # streams opened in the current window
        self.resets = 0  # streams reset, refused or rejected in the current window
        self.resets_since = -1e18

    def count(self, limit: str) -> None:
        self.events[limit] = self.events.get(limit, 0) + 1

    def control_frame(self, now: float) -> bool:
        """A control frame arrived at `now` (loop time)."""
        if now - self.control_since > self.limits.flood_window:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.control > self.limits.max_control_frames:
            self.count(CONTROL_FRAMES)
            return True
        return False

    def empty_frame(self) -> bool:
        """A frame without payload (and without END_STREAM) arrived."""
        self.empty += 1
        if self.empty > self.limits.max_empty_frames:
            self.count(EMPTY_FRAMES)
            return True
        return False

    def header_block(self, size: int) -> bool:
        """A header block being assembled has reached `size` bytes."""
        if size > self.limits.max_header_block_bytes:
            self.count(HEADER_BLOCK)
            return True
        return False

    def _roll(self, now: float) -> None:
        if now - self.resets_since > self.limits.flood_window:
            self.resets_since = now
            self.opened = 0
            self.resets = 0

    def stream_opened(self, now: float) -> None:
        self._roll(now)
        self.opened += 1

    def stream_reset(self, now: float) -> bool:
        """A stream the client opened was reset by it while running, or refused or rejected by the relay."""
        self._roll(now)
        self.resets += 1
        if self.resets > self.limits.max_resets and self.resets * 2 > self.opened:
            self.count(RESETS)
            return True
        return False


class RequestBuffers:
    """Request bytes held by calls across all connections (each connection keeps its own share)."""

    __slots__ = ("events", "limits", "peak", "total")

    def __init__(self, limits: H2Limits, events: dict[str, int]) -> None:
        self.limits = limits
        self.events = events
        self.total = 0
        self.peak = 0  # the most `total` has been

    def refusal(self, connection_bytes: int, more: int) -> str | None:
        """Why holding `more` bytes on a connection that holds `connection_bytes` is refused (counted), or None."""
        limits = self.limits
        if connection_bytes + more > limits.max_connection_buffered_bytes:
            self.events[CONNECTION_BUFFER] = self.events.get(CONNECTION_BUFFER, 0) + 1
            return (f"sidecar: too many request bytes buffered on this connection "
                    f"(limit {limits.max_connection_buffered_bytes})")
        if self.total + more > limits.max_total_buffered_bytes:
            self.events[TOTAL_BUFFER] = self.events.get(TOTAL_BUFFER, 0) + 1
            return f"sidecar: too many request bytes buffered (limit {limits.max_total_buffered_bytes})"
        return None
