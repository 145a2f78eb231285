"""The store thread: ordered, coalesced, off the loop; failures reach only the call that failed."""

from __future__ import annotations

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
