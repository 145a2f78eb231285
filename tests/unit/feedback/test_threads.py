"""The store thread: ordered, coalesced, off the loop; failures reach only the call that failed."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable

import pytest

from sidecar.feedback.store import PredictionColumns, PredictionRow, Row, StoreError
from sidecar.feedback.threads import WRITER_NICE, StoreThread, paced


class Log:
    """A connection that records what it is asked to do, and from which thread."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []
        self.threads: set[str] = set()
        self.closed = False
        self.fail_next_write = False

    def write(self, rows: Iterable[Row], count: int) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_next_write:
            self.fail_next_write = False
            raise OSError("disk full")
        ids = [row[0] for row in rows]
        assert len(ids) == count
        self.writes.append(ids)


def rows(*ids: str) -> list[PredictionRow]:
    return [PredictionRow(prediction_id, 0, "m", "binary", 0.5, 0.0) for prediction_id in ids]


def make(log: Log) -> StoreThread[Log]:
    def close(conn: Log) -> None:
        conn.closed = True

    return StoreThread("test-writer", lambda: log, close, write_rows=Log.write)


async def test_a_call_sees_every_row_batch_queued_before_it_in_one_write() -> None:
    log = Log()
    thread = make(log)
    await thread.start()
    thread.put(rows("a"))
    thread.put(rows("b", "c"))
    written = await thread.call(lambda conn: [list(batch) for batch in conn.writes])
    await thread.stop()
    assert [ident for batch in written for ident in batch] == ["a", "b", "c"]
    assert len(written) <= 2
    assert log.threads == {"test-writer"} and log.closed


async def test_the_written_callback_runs_on_the_loop_with_the_outcome() -> None:
    log = Log()
    thread = make(log)
    seen: list[tuple[int, bool, str]] = []

    def written(count: int, ok: bool) -> None:
        seen.append((count, ok, threading.current_thread().name))

    await thread.start(written)
    log.fail_next_write = True
    thread.put(rows("lost"))
    await thread.flush()
    thread.put(rows("kept", "also kept"))
    await thread.flush()
    await thread.stop()
    loop_thread = threading.current_thread().name
    assert seen == [(1, False, loop_thread), (2, True, loop_thread)]
    assert log.writes == [["kept", "also kept"]]


async def test_columns_are_written_as_rows_in_queue_order() -> None:
    log = Log()
    thread = make(log)
    await thread.start()
    thread.put(PredictionColumns("m", ["a", "a", "b"], [0, 1, 0], ["binary"] * 3, [0.1, 0.2, 0.3], 0.0))
    thread.put(rows("c"))
    await thread.stop()
    assert [ident for batch in log.writes for ident in batch] == ["a", "a", "b", "c"]


async def test_a_failing_call_raises_store_error_and_the_thread_carries_on() -> None:
    thread = make(Log())
    await thread.start()

    def broken(_: Log) -> None:
        raise ValueError("boom")

    with pytest.raises(StoreError, match="test-writer: boom"):
        await thread.call(broken)
    assert await thread.call(lambda conn: 42) == 42
    await thread.stop()


async def test_a_connection_failure_fails_start() -> None:
    def refuse() -> Log:
        raise ConnectionError("refused")

    thread: StoreThread[Log] = StoreThread("test-writer", refuse, lambda conn: None)
    with pytest.raises(StoreError, match="refused"):
        await thread.start()


async def test_stop_writes_what_is_still_queued() -> None:
    log = Log()
    thread = make(log)
    await thread.start()
    for index in range(100):
        thread.put(rows(f"id{index}"))
    await thread.stop()
    assert sum(len(batch) for batch in log.writes) == 100


def test_paced_rows_are_all_the_rows_in_order_with_a_pause_after_each_group() -> None:
    started = time.monotonic()
    out = list(paced(iter(range(7)), every=3, pause=0.02))
    assert out == list(range(7))
    assert time.monotonic() - started >= 0.04  # two full groups of 3, two pauses


def thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_a_writer_thread_runs_below_the_process_priority_and_a_reader_thread_at_it() -> None:
    seen: dict[str, int] = {}

    def write(conn: Log, rows: Iterable[Row], count: int) -> None:
        seen["writer"] = thread_nice()

    writer: StoreThread[Log] = StoreThread("writer", Log, lambda conn: None, write_rows=write)
    reader: StoreThread[Log] = StoreThread("reader", Log, lambda conn: None)
    await writer.start()
    await reader.start()
    writer.put(rows("a"))
    await writer.flush()
    seen["reader"] = await reader.call(lambda conn: thread_nice())
    await writer.stop()
    await reader.stop()
    process = os.getpriority(os.PRIO_PROCESS, 0)
    assert seen == {"writer": min(19, process + WRITER_NICE), "reader": process}


def windowed(log: Log, interval: float, rows_at_once: int = 1000) -> StoreThread[Log]:
    return StoreThread("test-writer", lambda: log, lambda conn: None, write_rows=Log.write,
                       flush_interval=interval, flush_rows=rows_at_once)


async def written_within(log: Log, seconds: float, count: int) -> float | None:
    """Seconds until `count` rows were written, or None when that took longer than `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if sum(map(len, log.writes)) >= count:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    return None


async def test_rows_wait_for_the_window_then_are_written_without_a_flush() -> None:
    log = Log()
    thread = windowed(log, 0.3)
    await thread.start()
    try:
        thread.put(rows("a"))
        await asyncio.sleep(0.05)
        thread.put(rows("b", "c"))
        assert await written_within(log, 0.15, 1) is None  # inside the window: still queued
        assert thread.queued_rows == 3
        assert await written_within(log, 2.0, 3) is not None  # the window of the oldest row ends: all in one write
        assert log.writes == [["a", "b", "c"]]
        assert thread.queued_rows == 0
    finally:
        await thread.stop()


async def test_reaching_flush_rows_writes_at_once_before_the_window_ends() -> None:
    log = Log()
    thread = windowed(log, 60.0, rows_at_once=10)
    await thread.start()
    try:
        thread.put(rows(*(f"a{index}" for index in range(6))))
        assert await written_within(log, 0.1, 1) is None
        thread.put(rows(*(f"b{index}" for index in range(4))))
        assert await written_within(log, 2.0, 10) is not None
        assert len(log.writes) == 1
    finally:
        await thread.stop()


async def test_a_call_does_not_wait_for_the_window_and_sees_the_rows_before_it() -> None:
    log = Log()
    thread = windowed(log, 60.0)
    await thread.start()
    try:
        thread.put(rows("a"))
        started = time.monotonic()
        assert await thread.call(lambda conn: [list(batch) for batch in conn.writes]) == [["a"]]
        assert time.monotonic() - started < 5.0
    finally:
        await thread.stop()


async def test_stop_writes_everything_queued_and_reports_it() -> None:
    log = Log()
    thread = windowed(log, 60.0, rows_at_once=100_000)
    await thread.start()
    for index in range(300):
        thread.put(rows(*(f"id{index}-{instance}" for instance in range(3))))
    assert thread.queued_rows == 900
    drained = await thread.stop(5.0)
    assert (drained.queued, drained.written, drained.failed, drained.left) == (900, 900, 0, 0)
    assert drained.complete and 0 <= drained.seconds < 5.0
    assert sum(map(len, log.writes)) == 900


async def test_stop_reports_failed_writes_and_rows_left_past_its_deadline() -> None:
    log = Log()
    release = threading.Event()

    def slow(conn: Log, batch: Iterable[Row], count: int) -> None:
        release.wait(10)
        conn.write(batch, count)

    thread: StoreThread[Log] = StoreThread("test-writer", lambda: log, lambda conn: None, write_rows=slow)
    await thread.start()
    log.fail_next_write = True
    thread.put(rows("fails"))
    release.set()
    await thread.flush()
    release.clear()
    thread.put(rows("slow"))
    await asyncio.sleep(0.05)  # the writer took it and waits
    thread.put(rows("late", "later"))
    drained = await thread.stop(0.2)
    assert (drained.queued, drained.written, drained.failed, drained.left) == (3, 0, 0, 3)
    assert not drained.complete
    release.set()  # the thread finishes on its own
    for _ in range(200):
        if thread.queued_rows == 0:
            break
        await asyncio.sleep(0.01)
    assert thread.queued_rows == 0
    assert log.writes in ([["slow"], ["late", "later"]], [["slow", "late", "later"]])  # as fast as the writer took them


async def test_a_failed_write_counts_as_failed_in_the_stop_report() -> None:
    log = Log()
    thread = windowed(log, 60.0)
    await thread.start()
    log.fail_next_write = True
    thread.put(rows("a", "b"))
    drained = await thread.stop()
    assert (drained.queued, drained.written, drained.failed, drained.left) == (2, 0, 2, 0)


async def test_calls_after_stop_fail_at_once_instead_of_waiting_forever() -> None:
    thread = make(Log())
    await thread.start()
    await thread.stop()
    with pytest.raises(StoreError, match="test-writer is stopped"):
        await asyncio.wait_for(thread.call(lambda conn: 1), 5.0)
    assert (await thread.stop()).queued == 0  # a second stop does nothing
