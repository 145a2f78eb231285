"""The history store: closed buckets per model in one SQLite file of the state directory, surviving restarts.

One thread owns the connection (a single-thread executor): writes are queued to it and never block the event loop,
reads are awaited from it. Each bucket is one row, its statistics a JSON document; rows are keyed by (model, start,
end), so a bucket written twice keeps its latest version. Retention: rows whose bucket ended more than `retention`
seconds ago are deleted, and beyond `max_rows` rows the oldest go first (down to 95% of `max_rows`); both are checked
after writes, at most every `TRIM_INTERVAL` seconds unless the row bound is passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    model TEXT NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (model, start, end)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_by_end ON buckets (end);
"""
TRIM_INTERVAL = 60.0
LOW_WATER = 0.95
FILE_NAME = "history.sqlite"


class Page(NamedTuple):
    buckets: list[dict[str, Any]]  # oldest first
    more: bool  # rows follow the last one


class HistoryStore:
    """`start()`, then `put` (non-blocking) and the awaited reads; `stop()` writes what is queued and closes."""

    def __init__(self, path: Path, retention: float, max_rows: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.retention = retention
        self.max_rows = max_rows
        self.clock = clock
        self.written = 0
        self.failed = 0
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._rows = 0
        self._last_trim = 0.0

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-store")
        await self._call(self._open)

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        executor.submit(self._close)
        await asyncio.to_thread(executor.shutdown, True)

    def put(self, model: str, start: float, end: float, body: dict[str, Any]) -> None:
        """Queue one bucket for writing (its JSON is built on the store's thread)."""
        if self._executor is None:
            self.failed += 1
            return
        self._executor.submit(self._write, model, start, end, body)

    async def page(self, model: str, since: float, until: float, after: tuple[float, float] | None,
                   limit: int) -> Page:
        """Buckets of `model` overlapping [since, until], oldest first, after the (start, end) `after`."""
        return await self._call(self._select, model, since, until, after, limit)

    async def has_model(self, model: str) -> bool:
        return await self._call(self._has, model)

    async def flush(self) -> None:
        """Wait until every queued write is done."""
        await self._call(lambda: None)

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the history store is not running")
        return await asyncio.wrap_future(self._executor.submit(function, *args))

    # -- on the store's thread ----------------------------------------------------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        self._rows = conn.execute("SELECT count(*) FROM buckets").fetchone()[0]
        self._trim(force=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, model: str, start: float, end: float, body: dict[str, Any]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            text = json.dumps(body, separators=(",", ":"), allow_nan=False)
            added = conn.execute("INSERT OR REPLACE INTO buckets (model, start, end, body) VALUES (?, ?, ?, ?)",
                                 (model, start, end, text)).rowcount
            self._rows += added
            self.written += 1
            self._trim(force=self._rows > self.max_rows)
        except (sqlite3.Error, ValueError) as exc:
            self.failed += 1
            log.warning("history: cannot store the bucket of model %s at %s: %s", model, start, exc)

    def _trim(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_trim < TRIM_INTERVAL:
            return
        self._last_trim = now
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.execute("DELETE FROM buckets WHERE end < ?", (now - self.retention,))
            self._rows = conn.execute("SELECT count(*) FROM buckets").fetchone()[0]
            if self._rows > self.max_rows:
                excess = self._rows - int(self.max_rows * LOW_WATER)
                row = conn.execute("SELECT end FROM buckets ORDER BY end LIMIT 1 OFFSET ?", (excess - 1,)).fetchone()
                if row is not None:
                    self._rows -= conn.execute("DELETE FROM buckets WHERE end <= ?", (row[0],)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _select(self, model: str, since: float, until: float, after: tuple[float, float] | None,
                limit: int) -> Page:
        conn = self._conn
        assert conn is not None
        query = "SELECT start, end, body FROM buckets WHERE model = ? AND end >= ? AND start <= ?"
        args: list[Any] = [model, since, until]
        if after is not None:
            query += " AND (start > ? OR (start = ? AND end > ?))"
            args += [after[0], after[0], after[1]]
        query += " ORDER BY start, end LIMIT ?"
        args.append(limit + 1)
        rows = conn.execute(query, args).fetchall()
        buckets = [json.loads(body) for _, _, body in rows[:limit]]
        return Page(buckets, len(rows) > limit)

    def _has(self, model: str) -> bool:
        conn = self._conn
        assert conn is not None
        return conn.execute("SELECT 1 FROM buckets WHERE model = ? LIMIT 1", (model,)).fetchone() is not None
