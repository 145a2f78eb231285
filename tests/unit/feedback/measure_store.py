"""Measure the prediction store's write-behind window: how long a put row waits until another connection can read it,
the CPU the writing costs, how many rows per second the writer stores, and how long `stop()` takes to write what is
queued.

Run: `python -m tests.unit.feedback.measure_store [--interval 0.1] [--rows 1000] [--redis redis://127.0.0.1:6379/0]`
(SQLite in a temporary directory unless --redis is given; the figures in docs/durability.md come from it). Not a
test: it takes about half a minute and loads a core.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar.feedback.store import Row
from sidecar.feedback.threads import ThreadedStore

Visible = Callable[[str], bool]


class Poller(threading.Thread):
    """From its own connection, notes when the last row of each put becomes readable (puts are written in order)."""

    def __init__(self, open_check: Callable[[], tuple[Visible, Callable[[], None]]], last_ids: list[str],
                 period: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.open_check = open_check
        self.last_ids = last_ids  # appended by the putting side
        self.period = period
        self.seen: list[float] = []  # wall time each put was first seen readable, by put index
        self.done = threading.Event()

    def run(self) -> None:
        visible, close = self.open_check()
        try:
            while not self.done.is_set() or len(self.seen) < len(self.last_ids):
                while len(self.seen) < len(self.last_ids) and visible(self.last_ids[len(self.seen)]):
                    self.seen.append(time.time())
                if self.done.is_set() and len(self.seen) < len(self.last_ids):
                    if not visible(self.last_ids[len(self.seen)]):
                        time.sleep(self.period)
                    continue
                time.sleep(self.period)
        finally:
            close()


class Backend:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.redis_url: str | None = args.redis
        self.work = work
        self.options: dict[str, Any] = {}
        if args.interval is not None:
            self.options["flush_interval"] = args.interval
        if args.rows is not None:
            self.options["flush_rows"] = args.rows
        self.runs = 0

    def open(self) -> ThreadedStore:
        self.runs += 1
        if self.redis_url:
            from sidecar.feedback.redis_store import RedisStore

            self.prefix = f"measure{time.time_ns()}:"
            return RedisStore(self.redis_url, retention=3600, key_prefix=self.prefix, **self.options)
        from sidecar.feedback.sqlite_store import SqliteStore

        self.path = self.work / f"run{self.runs}.sqlite3"
        return SqliteStore(self.path, retention=3600, max_rows=10_000_000, **self.options)

    def checker(self) -> tuple[Visible, Callable[[], None]]:
        if self.redis_url:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            prefix = self.prefix
            return (lambda prediction_id: bool(client.exists(f"{prefix}p:{prediction_id}"))), client.close
        conn = sqlite3.connect(self.path, timeout=30.0)
        query = "SELECT 1 FROM predictions WHERE id = ? AND instance = 0"
        return (lambda prediction_id: conn.execute(query, (prediction_id,)).fetchone() is not None), conn.close


def batch(prefix: str, start: int, count: int, when: float) -> list[Row]:
    return [(f"{prefix}{start + index}", 0, "m", "binary", 0.5, when) for index in range(count)]


def summary(name: str, lags: list[float], expected: int, cpu: float) -> str:
    if not lags:
        return f"{name}: nothing became visible"
    ordered = sorted(lags)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{name}: {len(lags)}/{expected} puts readable; lag p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms; process CPU {cpu * 100:.1f}% of a core")


async def paced_puts(backend: Backend, name: str, rows_per_put: int, puts_per_second: float, seconds: float) -> str:
    """Put `rows_per_put` rows `puts_per_second` times a second for `seconds`; report the put->readable lag."""
    store = backend.open()
    await store.start()
    last_ids: list[str] = []
    poller = Poller(backend.checker, last_ids)
    poller.start()
    put_times: list[float] = []
    count = int(puts_per_second * seconds)
    started, cpu = time.monotonic(), time.process_time()
    for index in range(count):
        delay = started + index / puts_per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        when = time.time()
        rows = batch(name, index * rows_per_put, rows_per_put, when)
        store.put(rows)
        put_times.append(when)
        last_ids.append(rows[-1][0])
    await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
    cpu_share = (time.process_time() - cpu) / (time.monotonic() - started)
    poller.done.set()
    await asyncio.to_thread(poller.join, 30)
    await store.stop()
    lags = [seen - put for seen, put in zip(poller.seen, put_times, strict=False)]
    return summary(f"{name} ({rows_per_put} rows x {puts_per_second:g}/s for {seconds:g} s)", lags, count, cpu_share)


async def cpu_cost(backend: Backend, rows_per_put: int, puts_per_second: float, seconds: float) -> str:
    """The process's CPU while putting at a steady rate, with nothing else running (no poller)."""
    store = backend.open()
    await store.start()
    count = int(puts_per_second * seconds)
    started, cpu = time.monotonic(), time.process_time()
    for index in range(count):
        delay = started + index / puts_per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        store.put(batch("c", index * rows_per_put, rows_per_put, time.time()))
    await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
    share = (time.process_time() - cpu) / (time.monotonic() - started)
    await store.stop()
    return (f"cpu ({rows_per_put} rows x {puts_per_second:g}/s for {seconds:g} s, no reader): {share * 100:.1f}% of "
            "a core")


async def throughput(backend: Backend, total: int, rows_per_put: int) -> str:
    """Queue `total` rows at once, then time until the last of them is readable from another connection."""
    store = backend.open()
    await store.start()
    visible, close = backend.checker()
    when = time.time()
    started = time.monotonic()
    for start in range(0, total, rows_per_put):
        store.put(batch("t", start, rows_per_put, when))
    queued = time.monotonic() - started
    try:
        while not visible(f"t{total - 1}"):
            await asyncio.sleep(0.005)
    finally:
        close()
    elapsed = time.monotonic() - started
    await store.stop()
    return (f"throughput: {total} rows queued in {queued * 1000:.0f} ms, the last readable after {elapsed:.2f} s: "
            f"{total / elapsed:,.0f} rows/s")


async def stop_time(backend: Backend, total: int, rows_per_put: int) -> str:
    """Queue `total` rows and stop at once: how long stop takes, and whether the last row is then readable."""
    store = backend.open()
    await store.start()
    when = time.time()
    for start in range(0, total, rows_per_put):
        store.put(batch("s", start, rows_per_put, when))
    drained = await store.stop()
    visible, close = backend.checker()
    try:
        last = visible(f"s{total - 1}")
    finally:
        close()
    return (f"stop with {total} rows queued: {drained.seconds:.2f} s, {drained.written} written, {drained.left} left, "
            f"last row readable afterwards: {last}")


async def trim_pause(backend: Backend, max_rows: int) -> str:
    """SQLite only: a store holding `max_rows` rows gets 1,000 more, so the writer deletes the oldest 5% in the same
    turn: how long rows put meanwhile wait."""
    from sidecar.feedback.sqlite_store import SqliteStore

    store = backend.open()
    await store.start()
    await store.stop()
    with sqlite3.connect(backend.path) as conn:  # fill it directly: faster than through the writer
        old = time.time() - 60
        conn.executemany("INSERT INTO predictions VALUES (?, 0, 'm', 'binary', 0.5, ?)",
                         ((f"old{index}", old + index * 1e-6) for index in range(max_rows)))
    store = SqliteStore(backend.path, retention=3600, max_rows=max_rows, **backend.options)
    await store.start()
    visible, close = backend.checker()
    try:
        started = time.time()
        store.put(batch("over", 0, 1000, started))  # this write pushes the store past max_rows: trimmed at once
        await asyncio.sleep(0.01)
        store.put(batch("next", 0, 1, time.time()))
        while not visible("next0"):
            await asyncio.sleep(0.002)
        elapsed = time.time() - started
    finally:
        close()
    await store.stop()
    return (f"trim: {max_rows} rows stored, 1000 more put: the next put readable after {elapsed * 1000:.0f} ms "
            f"(it waited for the window and the delete of the oldest {max_rows // 20} rows)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=float, help="flush_interval of the store (seconds)")
    parser.add_argument("--rows", type=int, help="flush_rows of the store")
    parser.add_argument("--redis", help="measure a Redis store at this URL instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        backend = Backend(args, Path(work))
        print(f"{'redis' if args.redis else 'sqlite'} store, options: {backend.options or 'defaults'}")
        print(await paced_puts(backend, "trickle", 1, 200, 5))
        print(await paced_puts(backend, "analysis", 900, 1, 5))
        print(await paced_puts(backend, "steady", 100, 100, 5))
        print(await cpu_cost(backend, 1, 1000, 5))
        print(await throughput(backend, 200_000, 1000))
        print(await stop_time(backend, 200_000, 1000))
        if not args.redis:
            print(await trim_pause(backend, 1_000_000))


if __name__ == "__main__":
    asyncio.run(main())
