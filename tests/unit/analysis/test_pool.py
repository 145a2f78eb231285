"""The worker pool with real spawned workers: captures in shared rings, sharding, drift end to end, restarts,
records dropped at a full ring, shutdown."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.analysis.pool import AnalysisPool
from sidecar.analysis.shards import shard
from sidecar.capture.settings import CaptureSettings
from sidecar.feedback.tasks import PredictionRules
from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import StoredPredictions
from sidecar.worker.settings import AnalysisSettings
from tests.support.helpers import eventually, metric
from tests.support.traffic import stream

pytestmark = pytest.mark.slow
STARTUP = 60.0  # spawned workers import numpy and scipy; a busy machine can take a while
SPAWN_HOLD = 0.5  # how long a held respawn waits for stop() to return (one that waits for it does not)
CAPTURE = CaptureSettings(capture_max_bytes=4 << 20, capture_batch_size=10, capture_flush_interval=0.01)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Callable[..., AnalysisPool]]:
    pools: list[AnalysisPool] = []

    def make(registry: CollectorRegistry, hook: Callable[[StoredPredictions], None] | None = None,
             capture: CaptureSettings = CAPTURE, **settings: object) -> AnalysisPool:
        values = {"reference_size": 100, "window_size": 100, **settings}
        pool = AnalysisPool(AnalysisSettings(**values), tmp_path / "state", registry,  # type: ignore[arg-type]
                            on_predictions=hook, capture=capture,
                            prediction_rules=PredictionRules() if hook is not None else None)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.stop(5.0)


async def append_all(pool: AnalysisPool, records: list[CaptureRecord]) -> None:
    """Capture records as the proxies do, letting the loop run between them; none may be dropped."""
    for record in records:
        pool.append(record)
        await asyncio.sleep(0)
    assert pool.dropped == {}


def test_a_model_maps_to_the_same_worker_in_every_process() -> None:
    names = [f"model-{n}" for n in range(50)]
    here = [shard(name, 4) for name in names]
    assert set(here) == {0, 1, 2, 3}
    code = ("from sidecar.analysis.shards import shard; "
            f"print([shard(n, 4) for n in {names!r}])")
    for seed in ("1", "2"):
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert output.strip() == str(here)



async def test_drift_is_raised_on_a_shifted_stream_and_not_on_a_stable_one(
        started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    pool = started(registry, workers=2)
    await pool.start()
    assert await pool.wait_ready(STARTUP)
    reference = [*stream("stable", 10, 10, seed=1), *stream("shifted", 10, 10, seed=2)]
    later = [*stream("stable", 10, 10, seed=3), *stream("shifted", 10, 10, seed=4, shift=2.5)]
    await append_all(pool, reference + later)
    checks = "sidecar_drift_checks_total"
    await eventually(lambda: metric(registry, checks, model="stable", detector="feature_drift") == 1
                     and metric(registry, checks, model="shifted", detector="feature_drift") == 1)
    assert metric(registry, "sidecar_drift_detected", model="shifted", detector="feature_drift") == 1
    assert metric(registry, "sidecar_drift_detected", model="stable", detector="feature_drift") == 0
    assert metric(registry, "sidecar_drift_p_value", model="shifted", detector="feature_drift",
                  feature="input[1]") < 0.05
    assert metric(registry, "sidecar_reference_instances", model="shifted") == 100
    assert metric(registry, "sidecar_analysed_instances_total", model="stable") == 200
    assert metric(registry, "sidecar_analysis_lag_seconds_count") == 40
    snapshot = pool.monitor("shifted")
    assert snapshot is not None
    assert snapshot["detectors"]["feature_drift"]["drift"] is True
    assert snapshot["reference"]["complete"] is True
    assert pool.monitor("unknown") is None
    assert pool.models() == ["shifted", "stable"]


async def test_a_killed_worker_is_restarted_and_keeps_its_reference_from_disk(
        started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    pool = started(registry, workers=1)
    await pool.start()
    assert await pool.wait_ready(STARTUP)
    await append_all(pool, list(stream("iris", 10, 10, seed=1)))
    await eventually(lambda: (pool.monitor("iris") or {}).get("reference", {}).get("complete") is True)
    [pid] = pool.worker_pids()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: metric(registry, "sidecar_worker_restarts_total", worker="0") == 1)
    assert await pool.wait_ready(STARTUP)
    assert pool.worker_pids() != [pid]
    await append_all(pool, list(stream("iris", 10, 10, seed=2)))
    await eventually(lambda: metric(registry, "sidecar_drift_checks_total", model="iris",
                                    detector="feature_drift") == 1)
    snapshot = pool.monitor("iris")
    assert snapshot is not None
    assert snapshot["reference"]["restored"] is True
    assert snapshot["reference"]["instances"] == 100
    assert metric(registry, "sidecar_drift_detected", model="iris", detector="feature_drift") == 0


async def test_stopping_while_a_worker_is_being_respawned_leaves_no_process_behind(
        started: Callable[..., AnalysisPool], monkeypatch: pytest.MonkeyPatch) -> None:
    pool = started(CollectorRegistry(), workers=1)
    await pool.start()
    [pid] = pool.worker_pids()
    assert pid is not None
    spawning, stop_begun, stop_returned, spawned = (threading.Event() for _ in range(4))
    processes: list[BaseProcess] = []
    spawn = pool._spawn

    def held_spawn(index: int, generation: int) -> Any:
        """The respawn, started only once stop() has begun, and held until stop() returns: at once for a stop()
        that lets go of it, after `SPAWN_HOLD` for one that waits for it."""
        spawning.set()
        stop_begun.wait(STARTUP)
        stop_returned.wait(SPAWN_HOLD)
        try:
            result = spawn(index, generation)
            processes.append(result[0])
            return result
        finally:
            spawned.set()

    monkeypatch.setattr(pool, "_spawn", held_spawn)
    os.kill(pid, signal.SIGKILL)
    await eventually(spawning.is_set)
    stopping = asyncio.create_task(pool.stop(STARTUP))
    stopping.add_done_callback(lambda _: stop_returned.set())
    await asyncio.sleep(0)  # the stop task runs its first step before this test resumes: stop() has begun
    stop_begun.set()
    await stopping
    # The respawn has started its process: before stop() returned when stop() waits for it, or just now when stop()
    # let go of it, and that process is still running then.
    await eventually(spawned.is_set)
    assert len(processes) == 1 and not processes[0].is_alive()
    assert pool.alive() == 0
    assert multiprocessing.active_children() == []


async def test_records_wait_and_drop_at_the_ring_while_the_workers_are_saturated(
        started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    stored: list[str] = []
    capture = CaptureSettings(capture_max_records=30, capture_batch_size=10, capture_flush_interval=0.01)
    pool = started(registry, workers=1, analysis_queue_batches=1, capture=capture,
                   hook=lambda predictions: stored.extend(predictions.ids))
    await pool.start()
    assert await pool.wait_ready(STARTUP)
    [pid] = pool.worker_pids()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a worker that has fallen behind
    try:
        records = list(stream("iris", 100, 1, seed=1))
        for record in records[:10]:
            pool.append(record)
        await eventually(lambda: pool.drained == 10)  # one batch in flight: the most this worker may hold
        for record in records[10:]:
            pool.append(record)
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        assert pool.drained == 10
        assert len(pool) == 30 and pool.bytes_waiting > 0  # 10 in flight and 20 waiting: the ring's bound
        assert pool.dropped == {"iris": 70}  # the records that did not fit; those in the ring stay
        assert pool.appended == 100
    finally:
        os.kill(pid, signal.SIGCONT)
    await eventually(lambda: pool.drained == 30 and len(pool) == 0)
    await eventually(lambda: metric(registry, "sidecar_analysed_instances_total", model="iris") == 30)
    assert pool.bytes_waiting == 0
    await eventually(lambda: len(stored) == 30)
    assert stored == [record.prediction_id for record in records[:30]]
    assert metric(registry, "sidecar_worker_restarts_total", worker="0") == 0
    assert registry.get_sample_value("sidecar_analysis_lost_records_total",
                                     {"worker": "0", "reason": "worker_died"}) is None


async def test_the_ring_is_reused_as_the_worker_reads_it(started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    capture = CaptureSettings(capture_max_bytes=64 << 10, capture_batch_size=10, capture_flush_interval=0.01)
    pool = started(registry, workers=1, capture=capture)
    await pool.start()
    records = list(stream("iris", 300, 1, seed=3))  # about 0.5 MB: eight times round a 64 KiB ring
    for record in records:
        while len(pool) >= 40:  # wait for room instead of dropping
            await asyncio.sleep(0.01)
        pool.append(record)
        await asyncio.sleep(0)
    assert pool.dropped == {}
    await eventually(lambda: metric(registry, "sidecar_analysed_instances_total", model="iris") == 300)


async def test_predictions_reach_the_hook_reduced_on_the_event_loop_thread(
        started: Callable[..., AnalysisPool]) -> None:
    seen: list[tuple[StoredPredictions, threading.Thread]] = []
    pool = started(CollectorRegistry(), workers=1, hook=lambda p: seen.append((p, threading.current_thread())))
    await pool.start()
    records = list(stream("iris", 3, 4, seed=1, prefix="req"))
    await append_all(pool, records)
    await eventually(lambda: sum(len(p.ids) for p, _ in seen) == 12)
    assert {thread for _, thread in seen} == {threading.current_thread()}  # no pool thread takes the GIL
    rows = sorted((pid, index, task, value) for p, _ in seen
                  for pid, index, task, value in zip(p.ids, p.instances, p.tasks, p.values, strict=True))
    assert [(pid, index) for pid, index, _, _ in rows] == [(f"req-1-{n}", i) for n in range(3) for i in range(4)]
    expected = []  # the arg-max class of the softmax model the stream's answers come from
    for record in sorted(records, key=lambda r: r.prediction_id):
        for probabilities in json.loads(record.response)["predictions"]:
            expected.append(("multiclass", str(max(range(3), key=probabilities.__getitem__))))
    assert [(task, value) for _, _, task, value in rows] == expected


async def test_stop_lets_workers_finish_their_batches(started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    pool = started(registry, workers=2, analysis_queue_batches=8)
    await pool.start()
    records = [*stream("a", 20, 5, seed=1), *stream("b", 20, 5, seed=2)]
    await append_all(pool, records)
    await pool.stop(STARTUP)
    assert pool.alive() == 0
    assert metric(registry, "sidecar_analysed_instances_total", model="a") == 100
    assert metric(registry, "sidecar_analysed_instances_total", model="b") == 100
    pool.append(records[0])
    pool.append(records[1])
    assert sum(metric(registry, "sidecar_analysis_lost_records_total", worker=str(w), reason="shutdown")
               for w in (0, 1)) == 2


async def test_stop_kills_workers_that_miss_the_deadline(started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    pool = started(registry, workers=1)
    await pool.start()
    assert await pool.wait_ready(STARTUP)
    [pid] = pool.worker_pids()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    for record in stream("iris", 2, 2, seed=1):
        pool.append(record)
    await pool.stop(0.2)
    assert pool.alive() == 0
    assert metric(registry, "sidecar_analysis_lost_records_total", worker="0", reason="shutdown") == 2
    assert metric(registry, "sidecar_worker_restarts_total", worker="0") == 0


SCRIPT = """
import asyncio, json, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from sidecar.messages.records import CaptureRecord
from sidecar.analysis.pool import AnalysisPool
from sidecar.worker.settings import AnalysisSettings

async def main():
    registry = CollectorRegistry()
    pool = AnalysisPool(AnalysisSettings(reference_size=10, window_size=10), Path(sys.argv[1]), registry)
    await pool.start()
    body = json.dumps({"instances": [[1.0, 2.0]] * 5}).encode()
    answer = json.dumps({"predictions": [[0.5, 0.5]] * 5}).encode()
    for n in range(4):
        pool.append(CaptureRecord(str(n), time.time(), "m", "", "", "rest", "tfserving", "predict", body, answer,
                                  200, 0.001))
    await pool.stop(60.0)
    print(registry.get_sample_value("sidecar_analysed_instances_total", {"model": "m"}))
    print("numpy" in sys.modules, "scipy" in sys.modules, "tensorflow" in sys.modules)

asyncio.run(main())
"""


def test_running_the_pool_keeps_numpy_out_of_the_main_process(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split() == ["20.0", "False", "False", "False"]


async def test_records_in_flight_to_a_worker_that_dies_are_counted_lost_and_the_rest_analysed(
        started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    stored: list[str] = []
    capture = CaptureSettings(capture_max_records=100, capture_batch_size=10, capture_flush_interval=0.01)
    pool = started(registry, workers=1, analysis_queue_batches=1, capture=capture,
                   hook=lambda predictions: stored.extend(predictions.ids))
    await pool.start()
    assert await pool.wait_ready(STARTUP)
    [pid] = pool.worker_pids()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the batch handed to it stays in flight
    records = list(stream("iris", 30, 1, seed=5))
    for record in records:
        pool.append(record)
    await eventually(lambda: pool.drained == 10)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: metric(registry, "sidecar_analysis_lost_records_total", worker="0",
                                    reason="worker_died") == 10)
    assert await pool.wait_ready(STARTUP)
    await eventually(lambda: len(stored) == 20)  # the 20 records still waiting went to the new worker
    assert sorted(stored) == sorted(record.prediction_id for record in records[10:])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
async def test_a_worker_runs_at_normal_priority_until_its_first_batch_then_at_idle(
        started: Callable[..., AnalysisPool]) -> None:
    registry = CollectorRegistry()
    pool = started(registry, workers=1, worker_priority="idle")
    await pool.start()
    assert await pool.wait_ready(STARTUP)
    [pid] = pool.worker_pids()
    assert pid is not None
    assert os.sched_getscheduler(pid) == os.SCHED_OTHER  # imports and set-up competed at normal priority
    await append_all(pool, list(stream("iris", 2, 10, seed=8)))
    await eventually(lambda: metric(registry, "sidecar_analysed_instances_total", model="iris") == 20)
    await eventually(lambda: os.sched_getscheduler(pid) == os.SCHED_IDLE)
