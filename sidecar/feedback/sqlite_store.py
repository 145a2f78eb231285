"""The default prediction store: one SQLite file in the state directory, surviving restarts.

A writer thread owns the main process's writing connection (feedback claims, retention trimming, the inserts no
worker made); a reader thread owns a second connection for lookups; each analysis worker inserts its predictions
through its own connection (`SqliteRowWriter`). WAL journaling lets the reader run while a writer commits, and
writers wait for each other (`BUSY_TIMEOUT`).
Durability: each write is one transaction, committed in WAL mode with `synchronous=NORMAL`: a commit survives the
process being killed (the WAL is in the file system), and survives a power loss or kernel crash once the next
checkpoint has synced it (docs/durability.md). Rows wait at most `flush_interval` for their write (see threads.py).
Retention: rows older than `retention` seconds are deleted, and beyond `max_rows` instances the oldest go first
(down to 95% of `max_rows`, so a store at its bound is trimmed once per 5% of new rows, not on every write).
Columns added since the first schema (`ADDED_COLUMNS`: the analysis's details, the joined truth) are added to an
older file when it is opened; its rows read them as NULL, "not recorded".
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sidecar.feedback.store import (
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_FLUSH_ROWS,
    SCORED_DETECTORS,
    Key,
    Predicted,
    PredictionRecord,
    Row,
    StoredPrediction,
    rows_of,
    stored_instance,
)
from sidecar.feedback.threads import StoreThread, ThreadedStore
from sidecar.messages.results import StoredPredictions

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT NOT NULL,
    instance INTEGER NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    predicted,
    time REAL NOT NULL,
    PRIMARY KEY (id, instance)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (time);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT NOT NULL,
    instance INTEGER NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (id, instance)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (time);
"""
SCORE_COLUMNS = tuple(f"score_{detector}" for detector in SCORED_DETECTORS)
ADDED_COLUMNS = {
    "predictions": (("version", "TEXT"), ("outliers", "TEXT"), ("issues", "TEXT"),
                    *((column, "REAL") for column in SCORE_COLUMNS)),
    "feedback": (("truth", ""),),  # as compared: a class label (TEXT) or a number (REAL)
}
ROW_COLUMNS = ", ".join(("id", "instance", "model", "task", "predicted", "time", "version", "outliers", "issues",
                         *SCORE_COLUMNS))
TRIM_INTERVAL = 2.0
RECOUNT_INTERVAL = 60.0  # while workers write, `rows` is counted again this often (a worker can die between its
# commit and its report)
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's transaction
WORKER_BUSY_TIMEOUT = 1.0  # the same for a worker's row writer (the main process stores what it could not)
_INSERT = f"INSERT OR REPLACE INTO predictions ({ROW_COLUMNS}) VALUES ({', '.join('?' * (9 + len(SCORE_COLUMNS)))})"
_INSERT_JSON = (f"INSERT OR REPLACE INTO predictions ({ROW_COLUMNS}) SELECT "
                + ", ".join(f"json_extract(value, '$[{index}]')" for index in range(9 + len(SCORE_COLUMNS)))
                + " FROM json_each(?)")
LOW_WATER = 0.95
LOOKUP_CHUNK = 500  # ids per query (SQLite's default limit on bound parameters is 32766)


class _Writer:
    """State of the writer connection: an approximate row count so trimming rarely needs COUNT(*)."""

    def __init__(self, conn: sqlite3.Connection, retention: float, max_rows: int,
                 store: SqliteStore | None = None) -> None:
        self.conn = conn
        self.store = store
        self.retention = retention
        self.max_rows = max_rows
        self.rows = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        self.last_trim = 0.0
        self.counted_elsewhere = 0  # of the store's `written_elsewhere` rows, those added to `rows`
        self.last_count = time.time()  # when `rows` was last counted


def _connect(path: Path, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqliteStore(ThreadedStore):
    shared = False

    def __init__(self, path: Path, retention: float, max_rows: int, flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 flush_rows: int = DEFAULT_FLUSH_ROWS) -> None:
        self.path = path
        self.retention = retention
        self.max_rows = max_rows
        self._writer: StoreThread[_Writer] = StoreThread(
            "sqlite-writer", self._open_writer, lambda w: w.conn.close(), write_rows=_insert, idle=_trim,
            idle_interval=TRIM_INTERVAL, flush_interval=flush_interval, flush_rows=flush_rows)
        self._reader: StoreThread[sqlite3.Connection] = StoreThread("sqlite-reader", self._open_reader,
                                                                     sqlite3.Connection.close)
        self.rows_elsewhere = 0  # rows the workers wrote; changed on the event loop, read by the writer thread

    def row_writer(self) -> SqliteRowWriter:
        return SqliteRowWriter(self.path)

    def written_elsewhere(self, rows: int) -> None:
        self.rows_elsewhere += rows

    def _open_writer(self) -> _Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        conn.executescript(SCHEMA)
        _add_columns(conn)
        writer = _Writer(conn, self.retention, self.max_rows, self)
        _trim(writer)
        return writer

    def _open_reader(self) -> sqlite3.Connection:
        return _connect(self.path)

    async def lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        return await self._reader.call_batched(_select_many, list(prediction_ids))

    async def describe(self, prediction_id: str) -> PredictionRecord | None:
        return await self._reader.call(_describe, prediction_id)

    async def claim(self, keys: Sequence[Key], truths: Sequence[Predicted] | None = None) -> list[bool]:
        kept: Sequence[Predicted | None] = truths if truths is not None else [None] * len(keys)
        claims = [(*key, truth) for key, truth in zip(keys, kept, strict=True)]
        return await self._writer.call_batched(_claim_many, claims)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Add the columns a file written by an older version lacks (its rows read them as NULL)."""
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}".rstrip())


def _insert(writer: _Writer, rows: Iterable[Row], count: int) -> None:
    _insert_rows(writer.conn, rows)
    writer.rows += count
    if writer.rows > writer.max_rows:
        _trim(writer, force=True)


def _insert_rows(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    """All `rows` in one transaction."""
    conn.execute("BEGIN")
    try:
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteRowWriter:
    """The store's `row_writer`: an analysis worker's own connection to the file (opened on first use; the main
    process's writer thread has created the schema by then). Trimming stays with the main process, which counts
    these rows as they arrive (`written_elsewhere`).

    Each write is one statement, its own transaction (`INSERT ... SELECT ... FROM json_each(?)` of the rows as one
    JSON text): SQLite's write lock is held only inside that one C call, which runs without the GIL, so a worker
    thread that the CPU scheduler starves can never be caught holding the lock between statements while the main
    process's feedback claims wait for it. Rows JSON cannot carry (non-finite numbers) go one statement each.
    Another writer's lock is waited for at most `WORKER_BUSY_TIMEOUT`; then the write fails and the main process
    stores the rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def write(self, predictions: Sequence[StoredPredictions]) -> None:
        if self._conn is None:
            self._conn = _connect(self.path, WORKER_BUSY_TIMEOUT)
        rows = [row for stored in predictions for row in rows_of([stored], time.time())]  # a time per part
        try:
            text = json.dumps(rows, allow_nan=False)
        except ValueError:  # NaN or infinity somewhere: JSON cannot carry them
            self._conn.executemany(_INSERT, rows)
            return
        self._conn.execute(_INSERT_JSON, (text,))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __getstate__(self) -> dict[str, Any]:  # crosses to the worker without a connection
        return {"path": self.path, "_conn": None}


Claim = tuple[str, int, Predicted | None]  # (prediction id, instance, truth)


def _claim_many(writer: _Writer, claim_lists: list[list[Claim]]) -> list[list[bool]]:
    """Claim every call's keys in one transaction; a key claimed earlier (even in this batch) answers False."""
    conn = writer.conn
    now = time.time()
    answers: list[list[bool]] = []
    conn.execute("BEGIN")
    try:
        for claims in claim_lists:
            answers.append([conn.execute("INSERT OR IGNORE INTO feedback (id, instance, time, truth) "
                                         "VALUES (?, ?, ?, ?)", (prediction_id, instance, now, truth)).rowcount == 1
                            for prediction_id, instance, truth in claims])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return answers


def _trim(writer: _Writer, force: bool = False) -> None:
    """Delete rows past retention, then the oldest beyond `max_rows` (at most every TRIM_INTERVAL seconds)."""
    now = time.time()
    if writer.store is not None and writer.store.rows_elsewhere:  # the workers' rows since the last look
        elsewhere = writer.store.rows_elsewhere
        writer.rows += elsewhere - writer.counted_elsewhere
        writer.counted_elsewhere = elsewhere
        if now - writer.last_count >= RECOUNT_INTERVAL:  # rows a worker wrote and never reported are counted too
            writer.rows = writer.conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
            writer.last_count = now
    if not force and now - writer.last_trim < TRIM_INTERVAL:
        return
    writer.last_trim = now
    conn = writer.conn
    cutoff = now - writer.retention
    conn.execute("BEGIN")
    try:
        writer.rows -= conn.execute("DELETE FROM predictions WHERE time < ?", (cutoff,)).rowcount
        conn.execute("DELETE FROM feedback WHERE time < ?", (cutoff,))
        if writer.rows > writer.max_rows:
            writer.rows = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
            keep = int(writer.max_rows * LOW_WATER)
            if writer.rows > writer.max_rows:
                writer.rows -= _delete_oldest(conn, "predictions", writer.rows - keep)
            feedback_rows = conn.execute("SELECT count(*) FROM feedback").fetchone()[0]
            if feedback_rows > writer.max_rows:
                _delete_oldest(conn, "feedback", feedback_rows - keep)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _delete_oldest(conn: sqlite3.Connection, table: str, excess: int) -> int:
    """Delete about the `excess` oldest rows (ties in time go together); returns how many went."""
    if excess <= 0:
        return 0
    row = conn.execute(f"SELECT time FROM {table} ORDER BY time LIMIT 1 OFFSET ?", (excess - 1,)).fetchone()
    if row is None:
        return 0
    return int(conn.execute(f"DELETE FROM {table} WHERE time <= ?", (row[0],)).rowcount)


def _select_many(conn: sqlite3.Connection, id_lists: list[list[str]]) -> list[dict[str, StoredPrediction]]:
    """Answer several lookups with one set of queries."""
    found = _select(conn, [prediction_id for ids in id_lists for prediction_id in ids])
    return [{prediction_id: found[prediction_id] for prediction_id in ids if prediction_id in found}
            for ids in id_lists]


def _select(conn: sqlite3.Connection, prediction_ids: list[str]) -> dict[str, StoredPrediction]:
    found: dict[str, StoredPrediction] = {}
    unique = list(dict.fromkeys(prediction_ids))
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start:start + LOOKUP_CHUNK]
        marks = ",".join("?" * len(chunk))
        cursor = conn.execute(f"SELECT id, instance, model, task, predicted, time FROM predictions "
                              f"WHERE id IN ({marks})", chunk)
        for prediction_id, instance, model, task, predicted, when in cursor:
            stored = found.get(prediction_id)
            if stored is None:
                stored = found[prediction_id] = StoredPrediction(model, task, when, {})
            stored.instances[instance] = predicted
    return found


def _describe(conn: sqlite3.Connection, prediction_id: str) -> PredictionRecord | None:
    rows: list[Row] = conn.execute(f"SELECT {ROW_COLUMNS} FROM predictions WHERE id = ? ORDER BY instance",
                                   (prediction_id,)).fetchall()
    if not rows:
        return None
    truths = dict(conn.execute("SELECT instance, truth FROM feedback WHERE id = ?", (prediction_id,)).fetchall())
    first = rows[0]
    return PredictionRecord(first[2], first[6], first[5], {row[1]: stored_instance(row) for row in rows}, truths)
