"""A thread that owns one store connection and runs queued operations off the event loop.

The event loop only enqueues (O(1), never blocks) and awaits futures. The thread takes everything queued at once
(a burst): it writes all the burst's rows first, in one write (one transaction or one pipeline), then answers the
calls in order, merging consecutive batched calls of one function (many concurrent lookups or claims) into one
query or pipeline. So a call sees every row queued before it, and concurrency costs fewer round trips, not more.
Results come back to the loop with `call_soon_threadsafe`.

Write-behind window: rows wait in the queue until the oldest of them has waited `flush_interval` seconds, or until
`flush_rows` rows are queued, or until a call is queued behind them (a call must see them), whichever comes first;
then one write takes everything queued (up to `MAX_COALESCED_ROWS`). While it waits, the writer sleeps on an event
that the loop sets only for those reasons, not once per put. `stop` writes everything queued and reports it
(`Drained`).

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

from sidecar.feedback.store import DEFAULT_STOP_TIMEOUT, Drained, Row, Rows, StoreError, WrittenCallback

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
    """Rows queued for writing, with when (`time.monotonic()`) they were queued (a wrapper: the queue also carries
    calls and the stop mark)."""

    __slots__ = ("queued_at", "rows")

    def __init__(self, rows: Rows, queued_at: float) -> None:
        self.rows = rows
        self.queued_at = queued_at


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
    that writes rows runs at `WRITER_NICE` below the process's priority. Rows are written at most `flush_interval`
    seconds after their put, or once `flush_rows` are queued (0 seconds: as soon as the thread is free).
    """

    def __init__(self, name: str, connect: Callable[[], Conn], close: Callable[[Conn], None],
                 write_rows: Callable[[Conn, Iterable[Row], int], None] | None = None,
                 idle: Callable[[Conn], None] | None = None, idle_interval: float = 5.0,
                 flush_interval: float = 0.0, flush_rows: int = MAX_COALESCED_ROWS) -> None:
        self.name = name
        self._connect = connect
        self._close = close
        self._write_rows = write_rows
        self._idle = idle
        self._idle_interval = idle_interval
        self._flush_interval = max(0.0, flush_interval)
        self._flush_rows = max(1, min(flush_rows, MAX_COALESCED_ROWS))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()  # set by the loop: enough rows queued, a call queued, or stopping
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_written: WrittenCallback | None = None
        self._closing = False
        self._rows_put = 0  # changed by the putting thread only
        self._rows_done = 0  # changed by this store thread only: written or failed
        self._rows_failed = 0  # changed by this store thread only

    @property
    def queued_rows(self) -> int:
        """Rows put and not yet written (nor failed)."""
        return self._rows_put - self._rows_done

    async def start(self, on_written: WrittenCallback | None = None) -> None:
        """Start the thread and wait until its connection is open; a failure to connect raises `StoreError`."""
        self._loop = asyncio.get_running_loop()
        self._on_written = on_written
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self.name, daemon=True)
        self._thread.start()
        await ready

    def put(self, rows: Rows) -> None:
        self._rows_put += len(rows)  # counted before the writer can see them: never negative
        self._queue.put(_Rows(rows, time.monotonic()))
        if self._rows_put - self._rows_done >= self._flush_rows:  # set after the put: the writer will find them
            self._wake.set()

    def call(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return self._enqueue(_Call(function, args, self._future()))

    def call_batched(self, function: Callable[[Conn, list[A]], list[T]], argument: A) -> asyncio.Future[T]:
        """`function(conn, [argument, ...])[i]` for this call's argument, merged with neighbouring calls of it."""
        return self._enqueue(_Call(function, (argument,), self._future(), batched=True))

    def _future(self) -> asyncio.Future[Any]:
        assert self._loop is not None, "start() first"
        return self._loop.create_future()

    def _enqueue(self, call: _Call) -> asyncio.Future[Any]:
        if self._closing:  # nothing would answer it
            call.future.set_exception(StoreError(f"{self.name} is stopped"))
        else:
            self._queue.put(call)
            self._wake.set()
        return call.future

    async def flush(self) -> None:
        """Wait until everything queued before this call has been processed."""
        await self.call(_nothing)

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> Drained:
        """Finish everything queued so far (for at most `timeout` seconds), close the connection and end the thread.

        Past the deadline the thread is left to finish on its own (a daemon: it dies with the process), and the
        rows it had not written are reported as `left`.
        """
        started = time.monotonic()
        thread = self._thread
        if thread is None or self._closing:
            return Drained(0, 0, 0, 0, 0.0)
        queued, done, failed = self.queued_rows, self._rows_done, self._rows_failed
        self._closing = True
        self._queue.put(_STOP)
        self._wake.set()
        await asyncio.to_thread(thread.join, max(0.0, timeout))
        if not thread.is_alive():
            self._thread = None
        elif self._write_rows is None:  # a writer's rows left are the caller's to report
            log.warning("%s did not finish its queue within %.1f s", self.name, timeout)
        failed = self._rows_failed - failed
        return Drained(queued, self._rows_done - done - failed, failed, self.queued_rows, time.monotonic() - started)

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
            stop = self._process(conn, self._gather(first))
            self._run_idle(conn)
            if stop:
                return

    def _gather(self, first: Any) -> list[Any]:
        """`first` and what else is queued, waiting for more rows while the rows' window allows it: until the oldest
        row has waited `flush_interval`, `flush_rows` rows are in, or a call (or the stop mark) is queued."""
        burst = [first]
        rows = len(first.rows) if isinstance(first, _Rows) else 0
        urgent = not isinstance(first, _Rows)
        due = first.queued_at + self._flush_interval if isinstance(first, _Rows) else 0.0
        while True:
            self._wake.clear()  # before looking: a set from now on ends the wait below at once
            while rows < MAX_COALESCED_ROWS:  # take what else is queued: one transaction for the lot
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                burst.append(item)
                if isinstance(item, _Rows):
                    rows += len(item.rows)
                else:
                    urgent = True
            if urgent or rows >= self._flush_rows:
                return burst
            remaining = due - time.monotonic()
            if remaining <= 0:
                return burst
            self._wake.wait(remaining)

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
            self._rows_failed += count
            log.warning("%s: storing %d prediction instances failed: %s", self.name, count, exc)
        self._rows_done += count
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

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> Drained:
        """Stop both threads at once, within `timeout` seconds; says what the writer did with its queue."""
        _, drained = await asyncio.gather(self._reader.stop(timeout), self._writer.stop(timeout))
        return drained

    def put(self, rows: Rows) -> None:
        self._writer.put(rows)

    async def flush(self) -> None:
        await self._writer.flush()
