"""The worker process protocol: batches (ranges of its shared capture ring) in, result lists out, a clean stop, and
no TensorFlow unless configured."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from sidecar.capture.shared_ring import SharedRingWriter
from sidecar.feedback.tasks import PredictionRules
from sidecar.messages import batches
from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import (
    BatchDone,
    DriftWindow,
    ModelStatus,
    StoredPredictions,
    WorkerStarted,
    WorkerStopped,
)
from sidecar.worker import process as worker
from sidecar.worker.settings import AnalysisSettings
from tests.support.traffic import stream

pytestmark = pytest.mark.slow
STARTUP = 60.0


Spawned = tuple[BaseProcess, Connection, Connection, SharedRingWriter]


def send_batch(tasks: Connection, ring: SharedRingWriter, generation: int, batch_id: int,
               records: list[CaptureRecord]) -> None:
    """What the pool does: write the records into the worker's ring, then tell the worker where they are."""
    assert all(ring.append(record) for record in records)
    start, end, count = ring.publish()
    tasks.send_bytes(batches.encode(batches.Batch(generation, batch_id, start, end, count)))


@pytest.fixture
def ring() -> Iterator[SharedRingWriter]:
    writer = SharedRingWriter(1 << 20, 10_000, batch_records=10_000)
    yield writer
    writer.close()


@pytest.fixture
def spawned(tmp_path: Path, ring: SharedRingWriter) -> Iterator[Spawned]:
    context = get_context("spawn")
    tasks_receive, tasks_send = context.Pipe(duplex=False)
    results_receive, results_send = context.Pipe(duplex=False)
    process = context.Process(target=worker.run, args=(3, 7, AnalysisSettings(reference_size=10, window_size=10),
                                                       str(tmp_path), ring.handle, tasks_receive, results_send,
                                                       logging.WARNING, PredictionRules()), daemon=True)
    process.start()
    tasks_receive.close()
    results_send.close()
    yield process, tasks_send, results_receive, ring
    process.kill()
    process.join(5)


def test_a_worker_answers_each_batch_with_its_summary_then_the_results(spawned: Spawned) -> None:
    process, tasks, results, ring = spawned
    assert results.poll(STARTUP)
    [started] = results.recv()
    assert started == WorkerStarted(3, 7, process.pid or 0)
    records = list(stream("iris", 3, 2, seed=1))
    send_batch(tasks, ring, 7, 42, records)
    assert results.poll(STARTUP)
    [done] = results.recv()
    assert isinstance(done, BatchDone)
    assert (done.worker, done.generation, done.batch_id, done.records) == (3, 7, 42, 3)
    assert done.analysed == {"iris": 6} and done.decode_errors == {}
    assert sum(done.lags.counts) == 3 and done.lags.total >= 0
    assert results.poll(STARTUP)
    answer = results.recv()  # nothing was sent before: the results follow at once
    [stored] = [item for item in answer if isinstance(item, StoredPredictions)]  # reduced for the feedback store
    assert stored.ids == [record.prediction_id for record in records for _ in range(2)]
    assert stored.instances == [0, 1] * 3 and set(stored.tasks) == {"multiclass"}
    assert all(value in {"0", "1", "2"} for value in stored.values)
    assert any(isinstance(item, ModelStatus) for item in answer)
    tasks.send_bytes(batches.STOP)
    assert results.poll(STARTUP)
    assert results.recv() == [WorkerStopped(3, 7)]
    process.join(STARTUP)
    assert process.exitcode == 0


def test_results_between_sends_are_held_merged_and_sent_once_per_interval(tmp_path: Path,
                                                                          ring: SharedRingWriter) -> None:
    context = get_context("spawn")
    tasks_receive, tasks = context.Pipe(duplex=False)
    results, results_send = context.Pipe(duplex=False)
    settings = AnalysisSettings(reference_size=10, window_size=10, result_interval=3.0)
    process = context.Process(target=worker.run, args=(0, 1, settings, str(tmp_path), ring.handle, tasks_receive,
                                                       results_send, logging.WARNING, PredictionRules()), daemon=True)
    process.start()
    tasks_receive.close()
    results_send.close()
    try:
        assert results.poll(STARTUP)
        results.recv()  # WorkerStarted
        records = list(stream("iris", 12, 5, seed=1))  # 60 instances: a reference of 10, then 5 windows of 10
        send_batch(tasks, ring, 1, 1, records[:2])
        assert results.poll(STARTUP)
        assert [type(item) for item in results.recv()] == [BatchDone]
        assert results.poll(STARTUP)
        first = results.recv()  # nothing sent yet: the results go at once
        assert any(isinstance(item, ModelStatus) for item in first)
        for batch_id, start in enumerate(range(2, 12, 2), start=2):
            send_batch(tasks, ring, 1, batch_id, records[start:start + 2])
        summaries = [results.recv() for _ in range(5)]  # within the interval: each batch's summary alone
        assert all(len(answer) == 1 and isinstance(answer[0], BatchDone) for answer in summaries)
        assert results.poll(10.0)
        held = results.recv()  # the interval passed: everything held, merged
        drift = [item for item in held if isinstance(item, DriftWindow) and item.detector == "feature_drift"]
        assert [item.counts()[0] for item in drift] == [5]
        assert [len(item.ids) for item in held if isinstance(item, StoredPredictions)] == [50]
        tasks.send_bytes(batches.STOP)
        assert results.poll(STARTUP)
        assert results.recv() == [WorkerStopped(0, 1)]
    finally:
        process.kill()
        process.join(5)


def test_a_worker_exits_when_its_task_pipe_closes(spawned: Spawned) -> None:
    process, tasks, results, _ = spawned
    assert results.poll(STARTUP)
    results.recv()
    tasks.close()  # what the worker sees when the main process dies
    process.join(STARTUP)
    assert process.exitcode == 0


SCRIPT = """
import os
import sys
import threading
from multiprocessing import Pipe
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from sidecar.capture.shared_ring import RingHandle, SharedRingWriter
from sidecar.messages import batches
from sidecar.worker import process as worker
from sidecar.worker.settings import AnalysisSettings
from tests.support.traffic import stream

tasks_receive, tasks_send = Pipe(duplex=False)
results_receive, results_send = Pipe(duplex=False)
ring = SharedRingWriter(1 << 20, 1000, 1000)
for record in stream("iris", 30, 10, seed=1):
    ring.append(record)
tasks_send.send_bytes(batches.encode(batches.Batch(1, 1, *ring.publish())))
tasks_send.send_bytes(batches.STOP)
settings = AnalysisSettings(reference_size=100, window_size=100, mmd_enabled=True, mmd_permutations=20)
messages = []

def read():
    try:
        while True:
            messages.extend(results_receive.recv())
    except EOFError:
        pass

reader = threading.Thread(target=read)
reader.start()
worker.run(0, 1, settings, sys.argv[1], RingHandle(os.dup(ring.fd), ring.size), tasks_receive, results_send)
reader.join()
print(sorted({getattr(m, "detector", "") for m in messages} - {""}))
print("tensorflow" in sys.modules)
print(sorted({type(m).__name__ for m in messages if "Predictions" in type(m).__name__}))
"""


def test_analysis_with_the_numpy_detectors_never_imports_tensorflow(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(root)], capture_output=True,
                            text=True, timeout=300, check=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    detectors, tensorflow, predictions = result.stdout.splitlines()
    assert detectors == "['feature_drift', 'mahalanobis', 'mmd', 'output_drift']"
    assert tensorflow == "False"
    assert predictions == "[]"  # started without prediction rules: nobody stores them, none are sent


def test_the_heap_keeps_freed_memory_wherever_glibc_allocates() -> None:
    assert worker.keep_heap_memory() is (platform.libc_ver()[0] == "glibc")


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the worker takes: each `time.sleep` it calls, recorded instead of slept."""
    taken: list[float] = []
    monkeypatch.setattr("sidecar.worker.process.time.sleep", taken.append)
    return taken


@pytest.mark.parametrize(("busy", "share", "pause"), [
    (0.02, 0.25, 0.06),  # 20 ms of CPU at a 25% share: 80 ms of wall time in all, so pause 60 ms
    (0.03, 0.5, 0.03),
    (0.001, 0.1, 0.009),
])
def test_a_cpu_share_below_one_pauses_in_proportion_to_the_batch_cpu_time(
        pauses: list[float], busy: float, share: float, pause: float) -> None:
    worker._keep_cpu_share(busy, share)
    assert pauses == [pytest.approx(pause)]
    assert busy / (busy + pauses[0]) == pytest.approx(share)  # the batch's CPU time is `share` of its wall time


def test_no_cap_or_no_cpu_time_takes_no_pause(pauses: list[float]) -> None:
    worker._keep_cpu_share(0.02, 1.0)  # no cap
    worker._keep_cpu_share(0.0, 0.25)  # nothing to make up for
    assert pauses == []
