"""The sink queue: bounded by events and bytes (waiting plus in flight), drops new events when full, batches by
size or age."""

from __future__ import annotations

import asyncio
import gc
import time

from sidecar.export.events import PayloadEvent, events_from_record
from sidecar.export.queue import SinkQueue

from .receivers import make_record


def event(index: int, size: int = 10) -> PayloadEvent:
    return events_from_record(make_record(prediction_id=f"p-{index}", request=b"x" * size), responses=False)[0]


async def test_a_full_queue_drops_new_events_and_counts() -> None:
    queue = SinkQueue(capacity=3, max_bytes=10_000, batch_size=3, flush_interval=1.0)
    accepted = [queue.put(event(index), time.monotonic()) for index in range(5)]
    assert accepted == [True, True, True, False, False]
    assert queue.dropped == 2 and queue.depth == 3 and queue.full
    assert [item.prediction_id for item in await queue.take()] == ["p-0", "p-1", "p-2"]


def test_the_byte_bound_holds_too() -> None:
    queue = SinkQueue(capacity=100, max_bytes=250, batch_size=10, flush_interval=1.0)
    for index in range(5):
        queue.put(event(index, size=100), time.monotonic())
        assert queue.held_bytes <= 250
    assert queue.depth == 2 and queue.dropped == 3
    assert queue.put(event(9, size=50), time.monotonic())  # a smaller one still fits
    assert queue.dropped == 3 and queue.held_bytes == 250


async def test_a_batch_is_handed_out_as_soon_as_it_is_full() -> None:
    queue = SinkQueue(capacity=100, max_bytes=10_000, batch_size=3, flush_interval=60.0)
    for index in range(4):
        queue.put(event(index), time.monotonic())
    batch = await asyncio.wait_for(queue.take(), 5)
    assert [item.prediction_id for item in batch] == ["p-0", "p-1", "p-2"]


async def test_a_partial_batch_is_handed_out_after_the_flush_interval() -> None:
    queue = SinkQueue(capacity=100, max_bytes=10_000, batch_size=100, flush_interval=0.05)
    taker = asyncio.create_task(queue.take())
    await asyncio.sleep(0)
    queue.put(event(1), time.monotonic())
    batch = await asyncio.wait_for(taker, 5)
    assert [item.prediction_id for item in batch] == ["p-1"]


async def test_events_in_flight_count_until_released() -> None:
    queue = SinkQueue(capacity=2, max_bytes=10_000, batch_size=2, flush_interval=60.0)
    queue.put(event(1), time.monotonic())
    queue.put(event(2), time.monotonic())
    batch = await queue.take()
    assert queue.depth == 2 and queue.waiting == 0
    assert not queue.put(event(3), time.monotonic())  # in-flight events count against the bound
    assert queue.dropped == 1
    for item in batch:
        queue.release(item)
    assert queue.depth == 0 and queue.held_bytes == 0
    assert queue.put(event(4), time.monotonic())


async def test_closing_flushes_what_waits_then_ends_the_senders() -> None:
    queue = SinkQueue(capacity=100, max_bytes=10_000, batch_size=100, flush_interval=60.0)
    queue.put(event(1), time.monotonic())
    queue.close()
    assert [item.prediction_id for item in await queue.take()] == ["p-1"]
    assert await queue.take() == []
    assert not queue.put(event(2), time.monotonic())
    assert queue.dropped == 1


def test_queued_events_are_plain_tuples_the_garbage_collector_stops_tracking() -> None:
    queue = SinkQueue(capacity=10, max_bytes=10_000, batch_size=10, flush_interval=1.0)
    queue.put(event(1), time.monotonic())
    gc.collect()
    (row,) = queue._waiting  # the stored form
    assert type(row) is tuple and not gc.is_tracked(row)


def test_rejected_events_are_counted_as_dropped() -> None:
    queue = SinkQueue(capacity=1, max_bytes=10_000, batch_size=1, flush_interval=1.0)
    queue.reject(2)
    assert queue.dropped == 2 and queue.put_count == 2 and queue.depth == 0


def test_discarding_at_the_deadline_counts_as_dropped() -> None:
    queue = SinkQueue(capacity=100, max_bytes=10_000, batch_size=100, flush_interval=60.0)
    for index in range(3):
        queue.put(event(index), time.monotonic())
    assert queue.discard_waiting() == 3
    assert queue.dropped == 3 and queue.depth == 0 and queue.held_bytes == 0
