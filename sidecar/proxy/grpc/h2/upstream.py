"""The model-server side of the HTTP/2 relay: one shared upstream connection, reconnected when it is lost.

All calls share one HTTP/2 connection to the model server (as the grpc.aio engine shares one channel). It is
opened when the relay starts and again by the first call after it was lost, and is used once the server's first
SETTINGS arrived (its stream limit is known then); while a connection attempt runs, calls wait for it. A failed
attempt fails the waiting calls with UNAVAILABLE at once and, for a short backoff (0.1 s doubling to 2 s, like
the grpc.aio engine's channel), later calls fail fast with the same reason instead of trying again. A connection
that received GOAWAY takes no new calls and closes when its last stream ends; calls it refused are retried on
the next connection when that is safe (unary calls not yet answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from sidecar.proxy.grpc.h2 import frames
from sidecar.proxy.grpc.h2.call import RelayCall
from sidecar.proxy.grpc.h2.endpoint import H2Endpoint, Sender, WriteBatch
from sidecar.proxy.grpc.h2.hpack import HeaderBlock

log = logging.getLogger(__name__)

INITIAL_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0


class H2UpstreamConnection(H2Endpoint):
    """Client role: opens one stream per call and hands the upstream's frames to it."""

    client_side = True

    def __init__(self, pool: H2UpstreamPool) -> None:
        super().__init__(pool.batch)
        self.pool = pool
        self.streams: dict[int, RelayCall] = {}
        self.pending: deque[RelayCall] = deque()  # calls waiting for a stream under the peer's limit
        self.next_stream = 1
        self.usable = True  # takes new calls (not going away, not closed)
        # Set once the server's first SETTINGS arrived: only then are its limits (concurrent streams) known, and
        # gRPC servers reset streams beyond their limit rather than refuse them.
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pool.connections.add(self)

    def open_stream(self, call: RelayCall) -> None:
        if not self.usable or self.next_stream > frames.MAX_STREAM_ID:
            self._retire()
            self.pool.open(call)
            return
        if len(self.streams) >= self.peer_max_streams:
            call.waiting = True
            self.pending.append(call)
            return
        stream_id = self.next_stream
        self.next_stream += 2
        self.streams[stream_id] = call
        call.opened(self, stream_id, self.open_sender(stream_id))

    def finish_stream(self, stream_id: int, reset_code: int | None) -> None:
        """The call on `stream_id` is over: reset it upstream when it still runs there, start a waiting call."""
        if self.streams.pop(stream_id, None) is None:
            return
        if reset_code is not None:
            self.reset(stream_id, reset_code)
        else:
            self.drop_sender(stream_id)
        self._start_pending()
        if not self.usable and not self.streams:
            self.close()

    def _start_pending(self) -> None:
        pending = self.pending
        while pending and len(self.streams) < self.peer_max_streams and self.usable:
            call = pending.popleft()
            if not call.done:
                self.open_stream(call)

    def _retire(self) -> None:
        self.usable = False
        self.pool.retire(self)
        pending, self.pending = self.pending, deque()
        for call in pending:
            if not call.done:
                self.pool.open(call)

    def on_settings(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)
        self._start_pending()

    def on_headers(self, stream_id: int, block: HeaderBlock, end_stream: bool) -> None:
        call = self.streams.get(stream_id)
        if call is not None:
            call.upstream_headers(block, end_stream)

    def on_data(self, stream_id: int, data: memoryview, end_stream: bool, flow_length: int) -> None:
        call = self.streams.get(stream_id)
        if call is not None:
            call.upstream_data(data, end_stream, flow_length)

    def on_reset(self, stream_id: int, code: int) -> None:
        call = self.streams.get(stream_id)
        if call is not None:
            call.upstream_reset(code)

    def on_drained(self, sender: Sender) -> None:
        call = self.streams.get(sender.stream_id)
        if call is not None:
            call.upstream_drained()

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        self._retire()
        refused = [stream_id for stream_id in self.streams if stream_id > last_stream_id]
        for stream_id in refused:
            call = self.streams.pop(stream_id)
            self.drop_sender(stream_id)
            call.upstream_refused()
        if not self.streams:
            self.close()

    def on_connection_lost(self, exc: Exception | None) -> None:
        self.pool.connections.discard(self)
        if not self.settled.done():
            self.settled.set_exception(ConnectionResetError("the connection closed before HTTP/2 settings arrived"))
            self.settled.exception()  # retrieved: nobody else may wait for it
        self._retire()
        reason = "connection lost" if exc is None else f"connection lost: {exc}"
        streams, self.streams = self.streams, {}
        for call in streams.values():
            call.upstream_lost(reason)


class H2UpstreamPool:
    """Holds the current upstream connection and opens a new one when needed."""

    def __init__(self, host: str, port: int, connect_timeout: float, batch: WriteBatch) -> None:
        self.batch = batch
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.current: H2UpstreamConnection | None = None
        self.connections: set[H2UpstreamConnection] = set()
        self.failure: str | None = None
        self._waiting: list[RelayCall] = []
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._backoff = INITIAL_BACKOFF_SECONDS
        self._stopped = False
        self._loop = asyncio.get_running_loop()

    def open(self, call: RelayCall) -> None:
        """Start `call` on the current connection, or once one is up, or fail it when the upstream is down."""
        current = self.current
        if current is not None:
            current.open_stream(call)
            return
        if self._stopped:
            call.upstream_unavailable("the sidecar is stopping")
            return
        if self._connecting is None and self.failure is not None and self._loop.time() < self._retry_at:
            call.upstream_unavailable(self.failure)
            return
        call.waiting = True
        self._waiting.append(call)
        self.connect()

    def connect(self) -> None:
        if self._connecting is None and self.current is None and not self._stopped:
            self._connecting = self._loop.create_task(self._connect(), name="h2-relay-connect")

    def retire(self, connection: H2UpstreamConnection) -> None:
        if self.current is connection:
            self.current = None

    async def _connect(self) -> None:
        connection: H2UpstreamConnection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await self._loop.create_connection(lambda: H2UpstreamConnection(self), self.host,
                                                                   self.port)
                await asyncio.shield(connection.settled)
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            if connection is not None:
                connection.close()
            self._failed(_reason(exc, self.connect_timeout, connected=connection is not None))
            return
        except asyncio.CancelledError:
            self._connecting = None
            if connection is not None:
                connection.close()
            raise
        self._connecting = None
        self.failure = None
        self._backoff = INITIAL_BACKOFF_SECONDS
        if self._stopped:
            connection.close()
            return
        self.current = connection
        waiting, self._waiting = self._waiting, []
        for call in waiting:
            if not call.done:
                self.open(call)

    def _failed(self, reason: str) -> None:
        log.debug("connecting to the upstream gRPC server failed: %s", reason)
        self.failure = reason
        self._retry_at = self._loop.time() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        waiting, self._waiting = self._waiting, []
        for call in waiting:
            call.upstream_unavailable(reason)

    async def close(self) -> None:
        self._stopped = True
        task = self._connecting
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        waiting, self._waiting = self._waiting, []
        for call in waiting:
            call.upstream_unavailable("the sidecar is stopping")
        self.current = None
        for connection in list(self.connections):
            connection.close()


def _reason(exc: BaseException, timeout: float, connected: bool = False) -> str:
    if isinstance(exc, TimeoutError):
        return f"no HTTP/2 settings within {timeout:g} s" if connected else f"no connection within {timeout:g} s"
    if connected:
        return f"connection lost: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect: {exc.strerror}"
    return f"cannot connect: {exc}"
