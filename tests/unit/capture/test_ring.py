"""The capture ring: O(1) append, bounded by records and bytes, drop-oldest counted per model, batched drain."""

from __future__ import annotations

import asyncio
import gc

from sidecar.capture.ring import CaptureRing, CountingConsumer, Drainer, Tee
from sidecar.messages.records import CaptureRecord, CaptureRow, as_record


def record(n: int, model: str = "m", size: int = 10) -> CaptureRecord:
    return CaptureRecord(f"id-{n}", float(n), model, "", "", "rest", "tfserving", "predict", b"q" * size, b"",
                         200, 0.001)


def test_full_ring_drops_the_oldest_and_counts_per_model() -> None:
    ring = CaptureRing(max_records=3, max_bytes=10_000)
    for n in range(5):
        ring.append(record(n, model="a" if n < 1 else "b"))
    assert [as_record(r).prediction_id for r in ring.drain(10)] == ["id-2", "id-3", "id-4"]
    assert ring.dropped == {"a": 1, "b": 1}
    assert ring.appended == 5


def test_records_waiting_in_the_ring_are_left_alone_by_the_garbage_collector() -> None:
    """A backed-up ring holds thousands of records for seconds; tracked, each older-generation collection walks them."""
    ring = CaptureRing(max_records=100, max_bytes=10_000)
    expected = []
    for n in range(50):
        ring.append(record(n))
        expected.append(tuple(record(n)))
    gc.collect()
    assert not [thing for thing in gc.get_objects() if type(thing) is CaptureRecord]  # type(): no attribute lookup
    drained = ring.drain(100)
    assert all(type(item) is tuple for item in drained)  # handed on as kept: nothing new for the collector
    assert drained == expected
    assert as_record(drained[7]) == record(7)


def test_byte_bound_evicts_until_under_the_limit() -> None:
    ring = CaptureRing(max_records=100, max_bytes=25)
    for n in range(4):
        ring.append(record(n, size=10))
    assert len(ring) == 2
    assert ring.bytes_waiting == 20
    assert sum(ring.dropped.values()) == 2


def test_drain_takes_the_oldest_first_and_updates_bytes() -> None:
    ring = CaptureRing(max_records=10, max_bytes=1000)
    for n in range(5):
        ring.append(record(n))
    assert [as_record(r).prediction_id for r in ring.drain(2)] == ["id-0", "id-1"]
    assert ring.bytes_waiting == 30
    assert len(ring) == 3


class FullConsumer:
    """Never has room: records must wait in the ring and drop there."""

    def __init__(self) -> None:
        self.got = 0

    def free_slots(self) -> int:
        return 0

    def submit(self, batch: list[CaptureRow]) -> None:
        self.got += len(batch)


class BrokenConsumer(CountingConsumer):
    def submit(self, batch: list[CaptureRow]) -> None:
        super().submit(batch)
        raise RuntimeError("boom")


async def test_drainer_hands_over_full_batches_quickly() -> None:
    ring = CaptureRing(max_records=1000, max_bytes=10**6, batch_size=4)
    consumer = CountingConsumer()
    drainer = Drainer(ring, consumer, flush_interval=10.0)
    drainer.start()
    for n in range(8):
        ring.append(record(n))
    for _ in range(50):
        if consumer.records == 8:
            break
        await asyncio.sleep(0.01)
    await drainer.stop()
    assert consumer.records == 8
    assert drainer.drained == 8


async def test_drainer_flushes_a_partial_batch_after_the_interval() -> None:
    ring = CaptureRing(max_records=1000, max_bytes=10**6, batch_size=100)
    consumer = CountingConsumer()
    drainer = Drainer(ring, consumer, flush_interval=0.02)
    drainer.start()
    ring.append(record(1))
    await asyncio.sleep(0.2)
    await drainer.stop(flush=False)
    assert consumer.records == 1


async def test_a_saturated_consumer_makes_records_drop_at_the_ring() -> None:
    ring = CaptureRing(max_records=5, max_bytes=10**6, batch_size=2)
    consumer = FullConsumer()
    drainer = Drainer(ring, consumer, flush_interval=0.01)
    drainer.start()
    for n in range(20):
        ring.append(record(n))
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    await drainer.stop(flush=False)
    assert consumer.got == 0
    assert len(ring) == 5
    assert ring.dropped == {"m": 15}


async def test_a_failing_consumer_never_stops_the_drain() -> None:
    ring = CaptureRing(max_records=100, max_bytes=10**6, batch_size=2)
    consumer = BrokenConsumer()
    errors: list[BaseException] = []
    drainer = Drainer(ring, consumer, flush_interval=0.01, on_error=errors.append)
    drainer.start()
    for n in range(6):
        ring.append(record(n))
        await asyncio.sleep(0.02)
    await drainer.stop()
    assert consumer.records == 6
    assert errors and isinstance(errors[0], RuntimeError)


def test_tee_appends_to_every_ring_independently() -> None:
    small, large = CaptureRing(2, 10**6), CaptureRing(10, 10**6)
    tee = Tee(small)
    tee.add(large)
    for n in range(4):
        tee.append(record(n))
    assert len(small) == 2 and len(large) == 4
    assert small.dropped == {"m": 2} and large.dropped == {}


async def test_stop_returns_while_records_keep_arriving() -> None:
    ring = CaptureRing(max_records=1000, max_bytes=10**6, batch_size=1)
    drainer = Drainer(ring, CountingConsumer(), flush_interval=0.001)
    drainer.start()
    running = True

    async def produce() -> None:
        n = 0
        while running:
            ring.append(record(n))
            n += 1
            await asyncio.sleep(0)

    producer = asyncio.get_running_loop().create_task(produce())
    await asyncio.sleep(0.05)
    for _ in range(20):
        await asyncio.wait_for(drainer.stop(flush=False), timeout=2.0)
        drainer.start()
        await asyncio.sleep(0.005)
    running = False
    await producer
    await asyncio.wait_for(drainer.stop(), timeout=2.0)
    assert len(ring) == 0
