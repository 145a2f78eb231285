"""A sink's bounded queue: O(1) put that never awaits, drops new events when full, batches by size or age.

Bounds cover events and body bytes, counting both waiting and in-flight events (a batch a sender holds, or
one being retried), so memory stays bounded whatever the receiver does. A full queue drops the new event
(like OpenTelemetry's batch processor) rather than evicting the oldest: with a dead receiver the queue's
content then stays put and the dropped events die young. Queued events are stored as plain tuples, which the
garbage collector stops tracking, so a full queue does not lengthen the collector's full passes (which stop
the proxy's event loop). Senders `take` a batch when `batch_size` events wait, when the oldest
has waited `flush_interval`, or at once while closing, and `release` each event when done with it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from sidecar.export.events import PayloadEvent

_ENQUEUED = PayloadEvent._fields.index("enqueued")


class SinkQueue:
    def __init__(self, capacity: int, max_bytes: int, batch_size: int, flush_interval: float) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._waiting: deque[tuple[Any, ...]] = deque()  # PayloadEvent fields as plain tuples (see PayloadEvent)
        self._bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._ready = asyncio.Event()
        self.closed = False
        self.put_count = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        """Events waiting plus events held by senders."""
        return len(self._waiting) + self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def held_bytes(self) -> int:
        return self._bytes + self._in_flight_bytes

    @property
    def full(self) -> bool:
        """True when new events are being dropped: senders stop retrying then, to make room."""
        return self.depth >= self.capacity or self.held_bytes >= self.max_bytes

    def put(self, event: PayloadEvent, now: float) -> bool:
        """Queue an event; returns False when it was dropped (closed, or no room)."""
        self.put_count += 1
        size = len(event.body)
        if (self.closed or len(self._waiting) + self._in_flight >= self.capacity
                or self._bytes + self._in_flight_bytes + size > self.max_bytes):
            self.dropped += 1
            return False
        waiting = self._waiting
        waiting.append((*event[:_ENQUEUED], now, size))  # a plain tuple: see PayloadEvent
        self._bytes += size
        if len(waiting) == 1 or len(waiting) == self.batch_size:
            self._ready.set()
        return True

    def reject(self, count: int) -> None:
        """Count events dropped without being offered (the caller saw the queue was full)."""
        self.put_count += count
        self.dropped += count

    async def take(self) -> list[PayloadEvent]:
        """Wait for a batch; returns [] once the queue is closed and empty."""
        while True:
            waiting = self._waiting
            if waiting and (self.closed or len(waiting) >= self.batch_size):
                return self._pop_batch()
            if self.closed:
                return []
            timeout: float | None = None
            if waiting:
                timeout = waiting[0][_ENQUEUED] + self.flush_interval - time.monotonic()
                if timeout <= 0:
                    return self._pop_batch()
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                pass

    def _pop_batch(self) -> list[PayloadEvent]:
        waiting = self._waiting
        make = PayloadEvent._make
        batch = [make(waiting.popleft()) for _ in range(min(self.batch_size, len(waiting)))]
        size = sum(item.size for item in batch)
        self._bytes -= size
        self._in_flight += len(batch)
        self._in_flight_bytes += size
        if waiting:
            self._ready.set()  # let another sender take the rest
        return batch

    def release(self, event: PayloadEvent) -> None:
        self._in_flight -= 1
        self._in_flight_bytes -= event.size

    def close(self) -> None:
        """No more puts; senders flush what waits, then `take` returns []."""
        self.closed = True
        self._ready.set()

    def discard_waiting(self) -> int:
        """Drop everything still waiting (shutdown deadline passed); returns how many."""
        count = len(self._waiting)
        self._waiting.clear()
        self._bytes = 0
        self.dropped += count
        return count
