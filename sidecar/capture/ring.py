"""Bounded capture ring: O(1) append that never awaits, drop-oldest with counts, drained in batches.

It feeds the payload log, and counts the captures when analysis is off; the analysis has its own ring in shared
memory (`shared_ring`).

Shaped like OpenTelemetry's batch processor: a deque bounded by record count and payload bytes; appending past
either bound evicts the oldest records and counts them per model; a drainer task is woken when a batch is ready
or a flush interval passes, and hands batches to a consumer only as fast as the consumer has room.

The ring keeps each record as a plain tuple of its fields (`CaptureRow`) and hands those tuples to its consumer as
they are. Python's garbage collector stops tracking a plain tuple of strings, numbers and bytes at its first
collection, but never a NamedTuple: a ring whose consumer falls behind holds its 10,000 records for seconds, and
every older-generation collection walked them all (2-3 ms on the event loop, several times per 8 s at 3,000
requests/s, when the analysis still read from this ring; bench/bench_analysis_load.py). Making `CaptureRecord`s
again when draining allocated a tracked object per record, which brought the next young-generation collection on
the event loop closer; consumers that want attributes call `as_record` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from operator import itemgetter
from typing import Protocol

from sidecar.messages.records import MODEL_INDEX, REQUEST_INDEX, RESPONSE_INDEX, CaptureRecord, CaptureRow

log = logging.getLogger(__name__)
_REQUEST = itemgetter(REQUEST_INDEX)
_RESPONSE = itemgetter(RESPONSE_INDEX)


class CaptureRing:
    def __init__(self, max_records: int, max_bytes: int, batch_size: int = 256) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self._records: deque[CaptureRow] = deque()  # plain tuples: see the module docstring
        self.bytes_waiting = 0
        self.appended = 0  # exchanges
        self.shadow_appended = 0  # shadow answers paired with an exchange's (CaptureRecord.shadow)
        self.dropped: dict[str, int] = {}
        self._wake: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: CaptureRecord) -> None:
        """Add a record, evicting the oldest while over a bound. Never blocks; safe from the event loop only."""
        size = len(record.request) + len(record.response)
        records = self._records
        records.append(tuple(record))
        self.bytes_waiting += size
        if record.shadow:
            self.shadow_appended += 1
        else:
            self.appended += 1
        while len(records) > self.max_records or (self.bytes_waiting > self.max_bytes and records):
            old = records.popleft()
            self.bytes_waiting -= len(_REQUEST(old)) + len(_RESPONSE(old))
            model = old[MODEL_INDEX]
            self.dropped[model] = self.dropped.get(model, 0) + 1
        if self._wake is not None and len(records) >= self.batch_size:
            self._wake.set()

    def drain(self, limit: int) -> list[CaptureRow]:
        """Take up to `limit` of the oldest records, as the plain tuples the ring keeps."""
        records = self._records
        count = min(limit, len(records))
        if count == len(records):
            taken = list(records)
            records.clear()
        else:
            take = records.popleft
            taken = [take() for _ in range(count)]
        self.bytes_waiting -= sum(map(len, map(_REQUEST, taken))) + sum(map(len, map(_RESPONSE, taken)))
        return taken

    def attach_waker(self, event: asyncio.Event) -> None:
        self._wake = event


class Consumer(Protocol):
    """Where drained batches go. `free_slots` is how many records it can take now (backpressure)."""

    def free_slots(self) -> int: ...

    def submit(self, batch: list[CaptureRow]) -> None: ...


class CountingConsumer:
    """Counts drained records; the consumer when analysis is off."""

    def __init__(self) -> None:
        self.records = 0

    def free_slots(self) -> int:
        return 1 << 30

    def submit(self, batch: list[CaptureRow]) -> None:
        self.records += len(batch)


class Drainer:
    """Background task moving batches from a ring to a consumer; records wait in the ring while it is full."""

    def __init__(self, ring: CaptureRing, consumer: Consumer, flush_interval: float,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.ring = ring
        self.consumer = consumer
        self.flush_interval = flush_interval
        self.drained = 0
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        ring.attach_waker(self._wake)

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="capture-drainer")

    async def _run(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the wake-up, which
        # made stop() wait forever under a steady stream of appends.
        while not self._stopping:
            if len(self.ring) < self.ring.batch_size:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._wake.wait()
            self.drain_once()
            if len(self.ring) and self.consumer.free_slots() <= 0:
                await asyncio.sleep(self.flush_interval)
            else:
                await asyncio.sleep(0)  # requests that arrived meanwhile go before the next batch

    def drain_once(self) -> int:
        room = self.consumer.free_slots()
        batch = self.ring.drain(min(room, self.ring.batch_size)) if room > 0 else []
        if batch:
            try:
                self.consumer.submit(batch)
            except Exception as exc:  # a consumer failure must never stop the drain
                log.exception("capture consumer failed")
                if self._on_error is not None:
                    self._on_error(exc)
            self.drained += len(batch)
        return len(batch)

    async def stop(self, flush: bool = True) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while flush and len(self.ring) and self.drain_once():
            pass


class CaptureTarget(Protocol):
    """Where the request path's captures go: `append` never waits (a ring, or the analysis pool's shared rings)."""

    def append(self, record: CaptureRecord) -> None: ...


class Tee:
    """Fans one append out to several independent rings (analysis, payload log, ...), each with its own bounds."""

    def __init__(self, *rings: CaptureTarget) -> None:
        self.rings: list[CaptureTarget] = list(rings)

    def add(self, ring: CaptureTarget) -> None:
        self.rings.append(ring)

    def append(self, record: CaptureRecord) -> None:
        for ring in self.rings:
            ring.append(record)
