"""A thread that owns one store connection and runs queued operations off the event loop.

The event loop only enqueues (O(1), never blocks) and awaits futures. The thread takes everything queued at once
(a burst): it writes all the burst's rows first, in one write (one transaction or one pipeline), then answers the
calls in order, merging consecutive batched calls of one function (many concurrent lookups or claims) into one
query or pipeline. So a call sees every row queued before it, and concurrency costs fewer round trips, not more.
Results come back to the loop with `call_soon_threadsafe`.

Writer threads yield to the event loop, which shares their process and GIL: they run at a lower CPU priority
(`WRITER_NICE`, Linux only) and pause briefly every `PACE_ROWS` rows (`paced`). Without both, the SQLite writer,
woken once a second with about 900 rows (bench/bench_analysis_load.py's saturated analysis), took the loop's CPU for
up to 2 ms at a time, binding rows under the GIL; bench/sched_trace.py shows how long the loop waited behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any, Generic, TypeVar

from sidecar.feedback.store import Row, Rows, StoreError, WrittenCallback

log = logging.getLogger(__name__)
Conn = TypeVar("Conn")
T = TypeVar("T")
A = TypeVar("A")

_STOP = object()
MAX_COALESCED_ROWS = 50_000
PACE_ROWS = 100  # rows written between pauses: about 0.2 ms of work in SQLite
PACE_SECONDS = 0.0001  # long enough for a thread waiting on the GIL (the event loop) to be woken and take it
WRITER_NICE = 10  # added to the process's nice value for writer threads: about a tenth of the loop's CPU weight


def _nothing(_: Any) -> None:
    return None


def paced(rows: Iterable[Row], every: int = PACE_ROWS, pause: float = PACE_SECONDS) -> Iterator[Row]:
    """`rows`, sleeping `pause` seconds (GIL and CPU released) after each `every` of them."""
    for position, row in enumerate(rows, 1):
        yield row
        if position % every == 0:
            time.sleep(pause)


def lower_thread_priority(nice: int) -> bool:
    """Add `nice` to the calling thread's nice value (on Linux a thread's own); False where that is not possible."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError:
        return False
    return True


class _Rows:
    """Rows queued for writing (a wrapper: the queue also carries calls and the stop mark)."""

    __slots__ = ("rows",)

    def __init__(self, rows: Rows) -> None:
        self.rows = rows


class _Call:
    __slots__ = ("args", "batched", "function", "future")

    def __init__(self, function: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any],
                 batched: bool = False) -> None:
        self.function = function
        self.args = args
        self.future = future
        self.batched = batched


class StoreThread(Generic[Conn]):
    """Runs `write_rows(conn, rows, count)` for queued rows and `function(conn, *args)` for calls, in queue order.

    `connect` runs in the thread (connections stay in the thread that made them); `idle(conn)` runs after each
    burst of work and at least every `idle_interval` seconds (retention trimming); `close(conn)` on stop. A thread
    that writes rows runs at `WRITER_NICE` below the process's priority.
    """

    def __init__(self, name: str, connect: Callable[[], Conn], close: Callable[[Conn], None],
                 write_rows: Callable[[Conn, Iterable[Row], int], None] | None = None,
                 idle: Callable[[Conn], None] | None = None, idle_interval: float = 5.0) -> None:
        self.name = name
        self._connect = connect
        self._close = close
        self._write_rows = write_rows
        self._idle = idle
        self._idle_interval = idle_interval
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_written: WrittenCallback | None = None

    async def start(self, on_written: WrittenCallback | None = None) -> None:
        """Start the thread and wait until its connection is open; a failure to connect raises `StoreError`."""
        self._loop = asyncio.get_running_loop()
        self._on_written = on_written
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self.name, daemon=True)
        self._thread.start()
        await ready

    def put(self, rows: Rows) -> None:
        self._queue.put(_Rows(rows))

    def call(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        assert self._loop is not None, "start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Call(function, args, future))
        return future

    def call_batched(self, function: Callable[[Conn, list[A]], list[T]], argument: A) -> asyncio.Future[T]:
        """`function(conn, [argument, ...])[i]` for this call's argument, merged with neighbouring calls of it."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Call(function, (argument,), future, batched=True))
        return future

    async def flush(self) -> None:
        """Wait until everything queued before this call has been processed."""
        await self.call(_nothing)

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish everything queued so far, close the connection and end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join, timeout)
        if thread.is_alive():
            log.warning("%s did not finish its queue within %.0f s", self.name, timeout)
        self._thread = None

    def _run(self, ready: asyncio.Future[None]) -> None:
        if self._write_rows is not None:
            lower_thread_priority(WRITER_NICE)
        try:
            conn = self._connect()
        except Exception as exc:
            self._resolve(ready, None, StoreError(f"{self.name}: {exc}"))
            return
        self._resolve(ready, None, None)
        try:
            self._serve(conn)
        finally:
            try:
                self._close(conn)
            except Exception:
                log.exception("%s: closing the connection failed", self.name)

    def _serve(self, conn: Conn) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._idle_interval)
            except queue.Empty:
                self._run_idle(conn)
                continue
            burst = [first]
            rows = len(first.rows) if isinstance(first, _Rows) else 0
            while rows < MAX_COALESCED_ROWS:  # take what else is queued: one transaction for the lot
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                burst.append(item)
                rows += len(item.rows) if isinstance(item, _Rows) else 0
            stop = self._process(conn, burst)
            self._run_idle(conn)
            if stop:
                return

    def _process(self, conn: Conn, burst: list[Any]) -> bool:
        """Rows first, then the calls in order (consecutive batched calls of one function merged)."""
        self._flush(conn, [item.rows for item in burst if isinstance(item, _Rows)])
        calls = [item for item in burst if isinstance(item, _Call)]
        start = 0
        while start < len(calls):
            end = start + 1
            if calls[start].batched:
                while end < len(calls) and calls[end].batched and calls[end].function is calls[start].function:
                    end += 1
                self._run_batch(conn, calls[start:end])
            else:
                self._run_call(conn, calls[start])
            start = end
        return any(item is _STOP for item in burst)

    def _run_call(self, conn: Conn, call: _Call) -> None:
        try:
            result = call.function(conn, *call.args)
        except Exception as exc:
            self._fail([call], exc)
        else:
            self._resolve(call.future, result, None)

    def _run_batch(self, conn: Conn, calls: list[_Call]) -> None:
        try:
            results = calls[0].function(conn, [call.args[0] for call in calls])
            if len(results) != len(calls):
                raise RuntimeError(f"{len(calls)} calls got {len(results)} answers")
        except Exception as exc:
            self._fail(calls, exc)
            return
        for call, result in zip(calls, results, strict=True):
            self._resolve(call.future, result, None)

    def _fail(self, calls: list[_Call], exc: Exception) -> None:
        name = getattr(calls[0].function, "__name__", "call")
        log.warning("%s: %s failed: %s", self.name, name, exc)
        for call in calls:
            self._resolve(call.future, None, StoreError(f"{self.name}: {exc}"))

    def _flush(self, conn: Conn, batches: list[Rows]) -> None:
        count = sum(map(len, batches))
        if not count or self._write_rows is None:
            return
        ok = True
        try:
            self._write_rows(conn, paced(chain.from_iterable(batches)), count)
        except Exception as exc:
            ok = False
            log.warning("%s: storing %d prediction instances failed: %s", self.name, count, exc)
        callback = self._on_written
        if callback is not None and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(callback, count, ok)

    def _run_idle(self, conn: Conn) -> None:
        if self._idle is None:
            return
        try:
            self._idle(conn)
        except Exception as exc:
            log.warning("%s: maintenance failed: %s", self.name, exc)

    def _resolve(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle)


class ThreadedStore:
    """Lifecycle shared by the stores: one writer thread (batched row writes) and one reader thread (lookups,
    claims). Subclasses set `_writer` and `_reader` in their constructor."""

    _writer: StoreThread[Any]
    _reader: StoreThread[Any]

    async def start(self, on_written: WrittenCallback | None = None) -> None:
        await self._writer.start(on_written)  # the writer creates any schema before the reader opens
        try:
            await self._reader.start()
        except BaseException:
            await self._writer.stop()
            raise

    async def stop(self) -> None:
        await self._reader.stop()
        await self._writer.stop()

    def put(self, rows: Rows) -> None:
        self._writer.put(rows)

    async def flush(self) -> None:
        await self._writer.flush()
