"""The SQLite store: survives restarts, trims by age and by row count, and never runs on the event loop thread."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.feedback import sqlite_store
from sidecar.feedback.sqlite_store import SqliteStore
from sidecar.feedback.store import PredictionRow
from sidecar.messages.results import StoredPredictions


def row(prediction_id: str, when: float, instance: int = 0, value: str | float = "1") -> PredictionRow:
    return PredictionRow(prediction_id, instance, "m", "multiclass", value, when)


async def test_predictions_and_claims_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "predictions.sqlite3"
    first = SqliteStore(path, retention=3600, max_rows=1000)
    await first.start()
    first.put([row("a", time.time()), row("a", time.time(), 1, 2.5)])
    assert await first.claim([("a", 0)]) == [True]
    await first.stop()

    second = SqliteStore(path, retention=3600, max_rows=1000)
    await second.start()
    try:
        assert (await second.lookup(["a"]))["a"].instances == {0: "1", 1: 2.5}
        assert await second.claim([("a", 0), ("a", 1)]) == [False, True]
    finally:
        await second.stop()


async def test_rows_older_than_the_retention_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "predictions.sqlite3"
    store = SqliteStore(path, retention=3600, max_rows=1000)
    await store.start()
    store.put([row("old", time.time() - 7200), row("new", time.time())])
    await store.stop()

    store = SqliteStore(path, retention=3600, max_rows=1000)
    await store.start()  # trims on open, then every few seconds
    try:
        assert set(await store.lookup(["old", "new"])) == {"new"}
    finally:
        await store.stop()


async def test_beyond_max_rows_the_oldest_instances_go_first_down_to_95_percent(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=100)
    await store.start()
    try:
        now = time.time()
        store.put([row(f"id{index:03d}", now - 1000 + index) for index in range(150)])
        await store.flush()
        found = await store.lookup([f"id{index:03d}" for index in range(150)])
        assert len(found) == 95
        assert min(found) == "id055"
    finally:
        await store.stop()


async def test_rows_the_workers_wrote_count_toward_max_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "TRIM_INTERVAL", 0.0)  # trim at every chance instead of every 2 s
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=100)
    await store.start()
    writer = store.row_writer()
    try:
        older, newer = [f"old{index:02d}" for index in range(75)], [f"new{index:02d}" for index in range(75)]
        for ids in (older, newer):  # two writes, two times: the oldest 55 to go take all of the first (a tie)
            writer.write([StoredPredictions("m", ids, [0] * 75, ["multiclass"] * 75, ["1"] * 75)])
            time.sleep(0.01)
        assert len(await store.lookup(older + newer)) == 150  # written, not yet counted
        store.written_elsewhere(150)
        await store.flush()
        await store.flush()  # runs after the trim that followed the first: that trim counted them
        assert sorted(await store.lookup(older + newer)) == newer
    finally:
        writer.close()
        await store.stop()


async def test_rows_a_worker_wrote_and_never_reported_are_counted_again_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "TRIM_INTERVAL", 0.0)
    monkeypatch.setattr(sqlite_store, "RECOUNT_INTERVAL", 0.0)  # count at every trim instead of every minute
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=100)
    await store.start()
    writer = store.row_writer()
    try:
        lost = [f"lost{index:03d}" for index in range(150)]  # a worker died after its commit: never reported
        writer.write([StoredPredictions("m", lost, [0] * 150, ["multiclass"] * 150, ["1"] * 150)])
        time.sleep(0.01)
        writer.write([StoredPredictions("m", ["told"], [0], ["multiclass"], ["1"])])
        store.written_elsewhere(1)
        await store.flush()
        await store.flush()
        assert sorted(await store.lookup([*lost, "told"])) == ["told"]  # the 150 unreported rows counted, oldest gone
    finally:
        writer.close()
        await store.stop()


async def test_a_replaced_prediction_id_keeps_only_the_latest_values(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=100)
    await store.start()
    try:
        store.put([row("a", time.time(), value="1")])
        store.put([row("a", time.time(), value="7")])
        await store.flush()
        assert (await store.lookup(["a"]))["a"].instances == {0: "7"}
    finally:
        await store.stop()


async def test_no_database_work_runs_on_the_event_loop_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()

    def recorded(function: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            threads.add(threading.current_thread().name)
            return function(*args)
        return wrapper

    for name in ("_insert", "_claim_many", "_select_many", "_trim"):
        monkeypatch.setattr(sqlite_store, name, recorded(getattr(sqlite_store, name)))
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=100)
    await store.start()
    try:
        store.put([row("a", time.time())])
        await store.claim([("a", 0)])
        await store.lookup(["a"])
    finally:
        await store.stop()
    assert threads == {"sqlite-writer", "sqlite-reader"}
    assert threading.current_thread().name not in threads


async def test_the_database_uses_write_ahead_logging_so_reads_do_not_wait_for_writes(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite3"
    store = SqliteStore(path, retention=3600, max_rows=100)
    await store.start()
    await store.stop()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


OLD_SCHEMA = """
CREATE TABLE predictions (id TEXT NOT NULL, instance INTEGER NOT NULL, model TEXT NOT NULL, task TEXT NOT NULL,
    predicted, time REAL NOT NULL, PRIMARY KEY (id, instance)) WITHOUT ROWID;
CREATE INDEX predictions_by_time ON predictions (time);
CREATE TABLE feedback (id TEXT NOT NULL, instance INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (id, instance)) WITHOUT ROWID;
CREATE INDEX feedback_by_time ON feedback (time);
"""


async def test_a_file_written_before_the_details_existed_stays_readable_and_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "predictions.sqlite3"
    with sqlite3.connect(path) as conn:  # as the previous version left it
        conn.executescript(OLD_SCHEMA)
        conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)",
                         [("old", 0, "m", "multiclass", "2", time.time()), ("old", 1, "m", "multiclass", "0",
                                                                           time.time())])
        conn.execute("INSERT INTO feedback VALUES (?, ?, ?)", ("old", 1, time.time()))
    conn.close()
    store = SqliteStore(path, retention=3600, max_rows=1000)
    await store.start()
    try:
        assert (await store.lookup(["old"]))["old"].instances == {0: "2", 1: "0"}
        record = await store.describe("old")
        assert record is not None and record.version is None and record.truths == {1: None}
        assert [(item.outliers, item.issues, item.scores) for item in record.instances.values()] == [
            (None, None, {}), (None, None, {})]
        assert await store.claim([("old", 0), ("old", 1)], ["2", "1"]) == [True, False]
        store.put([PredictionRow("new", 0, "m", "multiclass", "1", time.time(), "", "M", "a", 12.0, None)])
        await store.flush()
        new = await store.describe("new")
        assert new is not None and new.instances[0].scores == {"mahalanobis": 12.0}
        assert (await store.describe("old")).truths == {0: "2", 1: None}  # type: ignore[union-attr]
    finally:
        await store.stop()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(predictions)")]
    conn.close()
    assert columns[6:] == ["version", "outliers", "issues", "score_mahalanobis", "score_autoencoder"]
