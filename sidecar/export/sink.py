"""The common shape of a payload log sink: a bounded queue, a fixed number of sender tasks, counted outcomes.

A subclass implements `_deliver(delivery, sender)`, calling `delivery.sent()` / `delivery.failed()` for the events of
the batch in order. Whatever a sender leaves unfinished (an error, or cancellation at the shutdown deadline)
is counted as failed, so every queued event ends in exactly one outcome: sent, failed or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Histogram

from sidecar.export.events import PayloadEvent
from sidecar.export.queue import SinkQueue

log = logging.getLogger(__name__)

RETRY_BASE = 0.1
RETRY_CAP = 5.0
WARN_EVERY = 30.0
SLICE_SECONDS = 0.0002
INLINE_BODY_BYTES = 64 * 1024
T = TypeVar("T")


def backoff(attempt: int, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> float:
    """Exponential backoff with jitter: about base * 2**(attempt-1), at most cap."""
    delay: float = min(cap, base * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class Slicer:
    """Runs a sender's per-event CPU work (encoding, redaction) so that the proxy on the same loop barely notices.

    Small events are handled on the event loop, yielding to it every SLICE_SECONDS of work. Events with large
    bodies go to a worker thread. (A thread is no free lunch: it holds the GIL, and the loop waits up to the
    interpreter's 5 ms switch interval for it; short slices on the loop cost the proxy far less.)
    """

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def run(self, work: Callable[[PayloadEvent], T], event: PayloadEvent) -> T:
        if len(event.body) > INLINE_BODY_BYTES:
            result = await asyncio.to_thread(work, event)
            self._since = time.perf_counter()
            return result
        if time.perf_counter() - self._since >= SLICE_SECONDS:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
        return work(event)


class Delivery:
    """The events of one taken batch, finished in order."""

    def __init__(self, sink: Sink, items: list[PayloadEvent]) -> None:
        self.sink = sink
        self.items = items
        self.next = 0

    @property
    def remaining(self) -> int:
        return len(self.items) - self.next

    def events(self) -> list[PayloadEvent]:
        return self.items[self.next:]

    def sent(self, count: int = 1) -> None:
        now = time.monotonic()
        observe = self.sink.delivery.observe
        done = self._finish(count)
        for item in done:
            observe(now - item.enqueued)
        self.sink.sent += len(done)

    def failed(self, count: int = 1) -> None:
        if count > 0:
            self.sink.failed += len(self._finish(count))

    def _finish(self, count: int) -> list[PayloadEvent]:
        done = self.items[self.next:self.next + count]
        self.next += len(done)
        for item in done:
            self.sink.queue.release(item)
        return done


class Sink(ABC):
    def __init__(self, name: str, queue: SinkQueue, delivery: Histogram, senders: int) -> None:
        self.name = name
        self.queue = queue
        self.delivery = delivery.labels(name)
        self.senders = senders
        self.sent = 0
        self.failed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._last_warning = -WARN_EVERY
        self._suppressed = 0

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    @property
    def depth(self) -> int:
        return self.queue.depth

    def put(self, event: PayloadEvent, now: float) -> bool:
        return self.queue.put(event, now)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sender(index), name=f"payload-log-{self.name}-{index}")
                       for index in range(self.senders)]

    async def _sender(self, index: int) -> None:
        while True:
            batch = await self.queue.take()
            if not batch:
                return
            delivery = Delivery(self, batch)
            try:
                await self._deliver(delivery, index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sink failure never stops its sender
                self.warn(f"delivery failed: {exc!r}")
            finally:
                delivery.failed(delivery.remaining)

    @abstractmethod
    async def _deliver(self, delivery: Delivery, sender: int) -> None:
        """Send the batch; `sender` is the index (0 .. senders-1) of the sender task calling."""

    async def stop(self, timeout: float) -> None:
        """Flush within `timeout` seconds: senders finish what is queued, then whatever is left is counted."""
        self.queue.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=max(timeout, 0.0))
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks = []
        left = self.queue.discard_waiting()
        if left:
            log.warning("payload log %s: %d events still queued at the shutdown deadline were dropped",
                        self.name, left)
        await self._close()

    @abstractmethod
    async def _close(self) -> None:
        """Release the sink's resources (files, connections) after the senders stopped."""

    def warn(self, message: str) -> None:
        """Log a sink problem at most once per WARN_EVERY seconds (a dead receiver fails every event)."""
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} similar messages suppressed)" if self._suppressed else ""
        log.warning("payload log %s: %s%s", self.name, message, extra)
        self._last_warning = now
        self._suppressed = 0
