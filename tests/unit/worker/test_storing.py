"""A worker writes its predictions into the store before sending them, and hands them on unwritten when it cannot."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.feedback.sqlite_store import SqliteRowWriter, SqliteStore
from sidecar.messages.results import BatchDone, Result, StoredPredictions
from sidecar.worker.storing import StoreWriting

REPO = Path(__file__).resolve().parents[3]


def parts(*ids: str) -> list[list[Result]]:
    done = BatchDone(0, 0, 1, len(ids), {}, {}, {"m": len(ids)})
    return [[done, StoredPredictions("m", list(ids), [0] * len(ids), ["multiclass"] * len(ids), ["1"] * len(ids))]]


def predictions(sent: list[list[Result]]) -> list[StoredPredictions]:
    return [result for part in sent for result in part if isinstance(result, StoredPredictions)]


async def test_predictions_are_written_then_sent_marked_written(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=1000)
    await store.start()
    storing = StoreWriting(store.row_writer())
    try:
        sent = storing.write(parts("a", "b"))
        assert [result.written for result in predictions(sent)] == [True]
        assert isinstance(sent[0][0], BatchDone)  # the rest goes as it was
        assert set(await store.lookup(["a", "b"])) == {"a", "b"}
    finally:
        storing.close()
        await store.stop()


async def test_a_store_that_cannot_take_them_leaves_them_to_the_main_process_until_a_write_works_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "not-yet" / "p.sqlite3"  # its directory does not exist: SQLite cannot open it
    storing = StoreWriting(SqliteRowWriter(path), retry_seconds=0.2)
    with caplog.at_level(logging.INFO, logger="sidecar.worker.storing"):
        first = storing.write(parts("a"))
        second = storing.write(parts("b"))  # within the pause: not even tried
        assert [result.written for result in predictions(first + second)] == [False, False]
        store = SqliteStore(path, retention=3600, max_rows=1000)
        await store.start()  # the store appears
        try:
            assert not predictions(storing.write(parts("c")))[0].written  # still within the pause
            time.sleep(0.25)
            assert predictions(storing.write(parts("d")))[0].written
            assert set(await store.lookup(["a", "b", "c", "d"])) == {"d"}
        finally:
            storing.close()
            await store.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert len([text for text in messages if "failed" in text]) == 1  # said once, not once per send
    assert "the main process stores them" in messages[0]
    assert messages[-1] == "writing predictions to the store works again"


IDLE_WORKER = """
import os, sys
from pathlib import Path
from sidecar.feedback.sqlite_store import SqliteRowWriter
from sidecar.messages.results import StoredPredictions
from sidecar.worker.process import lower_priority
from sidecar.worker.storing import StoreWriting

storing = StoreWriting(SqliteRowWriter(Path(sys.argv[1])))  # before the priority drops, as in a worker
lower_priority("idle")  # what a worker does after its first batch
sent = storing.write([[StoredPredictions("m", ["idle"], [0], ["multiclass"], ["1"])]])
print(os.sched_getscheduler(0), os.sched_getscheduler(storing.thread.native_id), sent[0][0].written)
storing.close()
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_the_write_keeps_normal_priority_while_the_worker_runs_at_idle(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.sqlite3", retention=3600, max_rows=1000)
    await store.start()
    try:
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", IDLE_WORKER, str(store.path)],
                                       cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        worker_policy, writer_policy, written = done.stdout.split()
        assert (int(worker_policy), int(writer_policy), written) == (os.SCHED_IDLE, os.SCHED_OTHER, "True")
        assert set(await store.lookup(["idle"])) == {"idle"}
    finally:
        await store.stop()
