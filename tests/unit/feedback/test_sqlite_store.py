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
