"""The write-behind window of the prediction store (docs/durability.md): rows put are readable from a fresh store on
the same file (or Redis) within `store_flush_interval` without any flush; `stop()` writes everything queued and says
so in one line; SIGTERM and SIGINT stop that way; a hard kill loses only the rows inside the window."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from sidecar.feedback.backends import open_store
from sidecar.feedback.store import PredictionRow, PredictionStore, StoredPrediction
from sidecar.messages.results import StoredPredictions
from tests.support.helpers import metric

from .conftest import StartService
from .redis_server import running_redis

REPO = Path(__file__).resolve().parents[3]
SLACK = 1.5  # seconds allowed on top of a bound: the machine running the tests is shared and may be busy


@contextmanager
def backend(kind: str, tmp_path: Path) -> Iterator[str]:
    """The `store` setting of a fresh backend: sqlite (in tmp_path) or a URL of a real redis-server."""
    if kind == "sqlite":
        yield "sqlite"
        return
    with running_redis(tmp_path) as url:
        yield url


@asynccontextmanager
async def fresh_store(store: str, state_dir: Path) -> AsyncIterator[PredictionStore]:
    """Another store object on the same file (or Redis): its own connections, nothing shared with the writer."""
    opened = open_store(store, state_dir, retention=3600, max_rows=1_000_000, key_prefix="sidecar:")
    await opened.start()
    try:
        yield opened
    finally:
        await opened.stop()


def rows(name: str, count: int) -> list[PredictionRow]:
    now = time.time()
    return [PredictionRow(f"{name}-{index}", 0, "m", "binary", 0.5, now) for index in range(count)]


async def readable_after(reader: PredictionStore, prediction_ids: list[str], limit: float) -> float | None:
    """Seconds until every id is readable through `reader`, or None when that took longer than `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if len(await reader.lookup(prediction_ids)) == len(prediction_ids):
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_rows_put_are_readable_from_a_fresh_store_within_the_window_without_a_flush(
        kind: str, tmp_path: Path) -> None:
    interval = 0.3
    with backend(kind, tmp_path) as store:
        writer = open_store(store, tmp_path, retention=3600, max_rows=1_000_000, key_prefix="sidecar:",
                            flush_interval=interval, flush_rows=1_000_000)
        await writer.start()
        try:
            async with fresh_store(store, tmp_path) as reader:
                for round_number in range(3):  # a trickle: one small put at a time, each waits at most the window
                    batch = rows(f"r{round_number}", 5)
                    put_at = time.monotonic()
                    writer.put(batch)
                    waited = await readable_after(reader, [row.prediction_id for row in batch], interval + SLACK)
                    assert waited is not None, f"not readable within {interval + SLACK} s"
                    assert time.monotonic() - put_at >= interval * 0.9  # it did wait for the window, no more
        finally:
            await writer.stop()


async def test_flush_rows_queued_are_written_before_the_window_ends(tmp_path: Path) -> None:
    writer = open_store("sqlite", tmp_path, retention=3600, max_rows=1_000_000, key_prefix="", flush_interval=60.0,
                        flush_rows=500)
    await writer.start()
    try:
        async with fresh_store("sqlite", tmp_path) as reader:
            writer.put(rows("a", 300))
            await asyncio.sleep(0.2)
            assert await reader.lookup(["a-0"]) == {}  # under both bounds: still queued
            writer.put(rows("b", 200))
            assert await readable_after(reader, ["a-0", "a-299", "b-199"], SLACK) is not None
    finally:
        await writer.stop()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_stop_writes_everything_queued_and_says_so_in_one_info_line(
        kind: str, tmp_path: Path, start_service: StartService, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.feedback")
    with backend(kind, tmp_path) as store:
        service = await start_service(state_dir=tmp_path, store=store, store_flush_interval=60.0,
                                      store_flush_rows=1_000_000)
        ids = [f"p{index}" for index in range(3000)]
        for start in range(0, len(ids), 100):
            chunk = ids[start:start + 100]
            service.add_stored(StoredPredictions("m", chunk, [0] * len(chunk), ["binary"] * len(chunk),
                                                 [0.25] * len(chunk)))
        assert service.recent.queued_rows == 3000
        async with fresh_store(store, tmp_path) as reader:
            assert await reader.lookup(ids[:1]) == {}  # inside the window: not written yet
            caplog.clear()
            await service.stop()
            found = await reader.lookup(ids)
        assert len(found) == 3000 and found["p7"] == StoredPrediction("m", "binary", found["p7"].time, {0: 0.25})
        lines = [record for record in caplog.records if "feedback stopped" in record.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.INFO
        assert "flushed 3000 queued prediction rows to the store in" in lines[0].getMessage()


async def test_a_stop_that_cannot_write_everything_in_time_says_how_many_rows_are_lost(
        tmp_path: Path, start_service: StartService, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.feedback")
    service = await start_service(state_dir=tmp_path, store_flush_interval=60.0, store_stop_timeout=0.1)
    writer = service.store._writer  # type: ignore[attr-defined]
    release = asyncio.Event()
    blocked = asyncio.get_running_loop().create_future()

    def hold(conn: object) -> None:  # the writer is busy (a slow disk) until released
        asyncio.run_coroutine_threadsafe(_set(blocked), loop)
        while not release.is_set():
            time.sleep(0.01)

    loop = asyncio.get_running_loop()
    busy = writer.call(hold)
    await blocked
    service.add_stored(StoredPredictions("m", ["x", "y"], [0, 0], ["binary"] * 2, [0.5, 0.5]))
    await service.stop()
    release.set()
    await busy
    [line] = [record for record in caplog.records if "feedback stopped" in record.getMessage()]
    assert line.levelno == logging.WARNING
    assert "flushed 0 of 2 queued prediction rows" in line.getMessage()
    assert "2 were not written within store_stop_timeout (0.1 s): they are lost" in line.getMessage()


async def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def test_predictions_arriving_after_stop_began_are_dropped_and_counted(start_service: StartService) -> None:
    service = await start_service()
    await service.stop()
    service.add_stored(StoredPredictions("m", ["late"], [0], ["binary"], [0.5]))
    assert service.counts.store_dropped == 1


def child(state_dir: Path, store: str, interval: float, *phases: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.unit.feedback.store_child", str(state_dir), store,
                             str(interval), *phases], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_for_line(process: subprocess.Popen[str], expected: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == expected:
            return
    errors = process.stderr.read() if process.stderr else ""
    raise AssertionError(f"the child ended before printing {expected!r}: {errors}")


async def stored(store: str, state_dir: Path, ids: list[str]) -> set[str]:
    async with fresh_store(store, state_dir) as reader:
        return set(await reader.lookup(ids))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_process_with_every_queued_row_written(sig: signal.Signals, tmp_path: Path) -> None:
    process = child(tmp_path, "sqlite", 60.0, "queued:2000")  # a window far longer than the test: all still queued
    try:
        wait_for_line(process, "ready")
        process.send_signal(sig)
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, errors
    assert "INFO sidecar.feedback.api feedback stopped: flushed 2000 queued prediction rows to the store" in errors
    assert len(await stored("sqlite", tmp_path, [f"queued-{index}" for index in range(2000)])) == 2000


async def test_a_hard_kill_loses_the_rows_inside_the_window_and_nothing_older(tmp_path: Path) -> None:
    interval = 1.0
    # "old" is put, then the process lives on for longer than the window; "new" is put just before the kill
    process = child(tmp_path, "sqlite", interval, "old:500", f"sleep:{interval + 1.0}", "new:500")
    try:
        wait_for_line(process, "ready")
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    found = await stored("sqlite", tmp_path, [f"{name}-{index}" for name in ("old", "new") for index in range(500)])
    assert {prediction_id.split("-")[0] for prediction_id in found} == {"old"} and len(found) == 500


async def test_the_service_passes_the_window_settings_to_its_store(start_service: StartService) -> None:
    service = await start_service(store_flush_interval=0.25, store_flush_rows=7)
    writer = service.store._writer  # type: ignore[attr-defined]
    assert (writer._flush_interval, writer._flush_rows) == (0.25, 7)
    assert metric(service.registry, "sidecar_feedback_store_queue_rows") == 0
