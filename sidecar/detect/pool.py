"""The analysis worker pool: spawned worker processes, models sharded by a stable hash, bounded batches in flight.

The capture ring's drainer is the pool's only caller on the event loop: `free_slots()` says how many records
the pool takes now and `submit(batch)` splits a batch by worker, encodes it (`batches`: the small fields pickled
as columns in one C call, the bodies left where they are) and queues the parts without blocking; a sender thread
per worker writes them into the worker's pipe. Encoding on the loop keeps the sender thread from needing the GIL
for more than a moment: pickling in that thread had cost a GIL hand-off per batch, and the proxy's p99 at 4 paced
connections was 2.4-2.6x analysis-off against 1.2-1.8x after (bench/bench_analysis_load.py).

Each worker holds at most `analysis_queue_batches` batches in flight; when any worker is full, `free_slots()` is 0
and records wait in the ring, which drops the oldest and counts them, so the proxy never waits for the analysis.

A supervisor thread reads every worker's result pipe and process sentinel: results are applied to the metrics
and the monitor store; predictions, reduced by the workers with `prediction_rules`, go to `on_predictions`, called
on the supervisor thread, so it must be thread-safe and quick. A worker that exits is restarted (counted, with a
growing delay when it keeps dying quickly); its batches in flight are lost and counted. Model state survives
restarts through the state directory (saved references).

This module imports no numpy: the main process stays light; workers import the numeric stack themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from operator import itemgetter
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.capture.records import MODEL_INDEX, CaptureRow
from sidecar.detect import batches
from sidecar.detect import worker as worker_module
from sidecar.detect.metrics import AnalysisMetrics
from sidecar.detect.monitor import MonitorStore
from sidecar.detect.results import BatchDone, Result, StoredPredictions, WorkerStarted, WorkerStopped
from sidecar.detect.settings import AnalysisSettings
from sidecar.feedback.tasks import PredictionRules

log = logging.getLogger(__name__)
PredictionsHook = Callable[[StoredPredictions], None]
QUICK_EXIT_SECONDS = 30.0  # a worker that dies sooner than this after starting counts as crash-looping
MAX_RESTART_DELAY = 30.0
STOP_TIMEOUT_SECONDS = 10.0
_STOP = object()  # sender: send the worker its stop message, then retire
_RETIRE = object()  # sender: the worker is gone, retire without sending
_MODEL = itemgetter(MODEL_INDEX)


def shard(model: str, workers: int) -> int:
    """The worker that owns `model`: a hash that is the same in every process and every run."""
    return zlib.crc32(model.encode("utf-8", "surrogatepass")) % workers


def split_by_worker(batch: list[CaptureRow], workers: int) -> dict[int, list[CaptureRow]]:
    """The records of `batch` grouped by the worker owning their model, in order. A batch whose models all belong
    to one worker (one model, the usual case) is taken whole: the loop costs about 35 us per 256 records."""
    owners = {model: shard(model, workers) for model in set(map(_MODEL, batch))}
    if len(set(owners.values())) <= 1:
        return {owner: batch for owner in owners.values()}
    groups: dict[int, list[CaptureRow]] = {}
    for record in batch:
        groups.setdefault(owners[record[MODEL_INDEX]], []).append(record)
    return groups


class _Link:
    """One generation of one worker: its process, pipes, sender thread and batches in flight."""

    def __init__(self, index: int, generation: int, process: BaseProcess, tasks: Connection,
                 results: Connection) -> None:
        self.index = index
        self.generation = generation
        self.process = process
        self.tasks = tasks
        self.results: Connection | None = results
        self.inflight: dict[int, int] = {}  # batch id -> records
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.started = time.monotonic()
        self.ready = False
        self.sender = threading.Thread(target=self._send_loop, name=f"analysis-sender-{index}", daemon=True)

    def _send_loop(self) -> None:
        """Write encoded batches into the worker's pipe; may block while the worker is busy (never on the loop)."""
        try:
            while True:
                item = self.outbox.get()
                if item is _RETIRE:
                    return
                try:
                    batches.send(self.tasks.fileno(), [batches.STOP] if item is _STOP else item)
                except (OSError, ValueError):
                    return  # the worker died: the supervisor counts what was in flight
                if item is _STOP:
                    return
        finally:
            self.tasks.close()


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.link: _Link | None = None
        self.restart_at: float | None = None
        self.quick_exits = 0


class AnalysisPool:
    """Worker processes running the detectors; a capture-ring consumer (`free_slots`, `submit`)."""

    def __init__(self, settings: AnalysisSettings, state_dir: Path, registry: CollectorRegistry,
                 on_predictions: PredictionsHook | None = None, *, model_label_cap: int = 100,
                 batch_records: int = 256, prediction_rules: PredictionRules | None = None) -> None:
        settings.check()
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.on_predictions = on_predictions
        # how the workers reduce predictions for the hook; none are sent when nobody takes them
        self.prediction_rules = None if on_predictions is None else prediction_rules or PredictionRules()
        self.batch_records = batch_records
        self.metrics = AnalysisMetrics(registry, settings.max_feature_labels, model_label_cap)
        self.store = MonitorStore()
        self._context = get_context("spawn")
        self._slots = [_Slot(index) for index in range(settings.workers)]
        self._lock = threading.Lock()
        self._batch_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: threading.Thread | None = None
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._log_level = logging.getLogger().getEffectiveLevel()
        for index in range(settings.workers):
            self.metrics.restarts.labels(str(index))
        self.metrics.workers_alive.set_function(self.alive)

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the workers and the supervisor thread. Workers get ready in the background."""
        self._loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._start_all)
        self._supervisor = threading.Thread(target=self._supervise, name="analysis-supervisor", daemon=True)
        self._supervisor.start()

    def _start_all(self) -> None:
        for slot in self._slots:
            self._start_worker(slot)

    async def wait_ready(self, timeout: float) -> bool:
        """True once every worker has reported it started (imports done), False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(slot.link is not None and slot.link.ready for slot in self._slots):
                    return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let workers finish the batches they hold, within `timeout` seconds; then kill what is left."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._stopping = True
            for slot in self._slots:
                slot.restart_at = None
                if slot.link is not None:
                    slot.link.outbox.put(_STOP)
        self._wake()
        while time.monotonic() < deadline and self.alive():
            await asyncio.sleep(0.02)
        with self._lock:
            leftovers = [slot.link.process for slot in self._slots if slot.link is not None]
        for process in leftovers:
            with contextlib.suppress(Exception):
                process.kill()
        if self._supervisor is not None:
            self._wake()
            await asyncio.to_thread(self._supervisor.join, 5.0)
            if not self._supervisor.is_alive():
                self._supervisor = None
        if self._supervisor is None and self._wake_read >= 0:  # never close what a live supervisor waits on
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1

    def worker_pids(self) -> list[int | None]:
        """Process id of each worker (None while it waits to restart)."""
        with self._lock:
            return [slot.link.process.pid if slot.link is not None else None for slot in self._slots]

    def alive(self) -> int:
        """Workers running (started and not yet seen to exit)."""
        with self._lock:
            return sum(1 for slot in self._slots if slot.link is not None)

    # -- consumer protocol (event loop) ---------------------------------------------------------------------

    def free_slots(self) -> int:
        """Records the pool takes now: one batch per free in-flight slot of the busiest worker."""
        limit = self.settings.analysis_queue_batches
        with self._lock:
            if self._stopping:
                return 0
            links = [slot.link for slot in self._slots if slot.link is not None]
            if not links:
                return 0
            free = min(limit - len(link.inflight) for link in links)
        return max(0, free) * self.batch_records

    def submit(self, batch: list[CaptureRow]) -> None:
        """Queue records to the workers owning their models; never blocks. Records no worker can take are lost
        and counted (a worker waiting to restart, or a caller that ignored `free_slots`)."""
        groups = split_by_worker(batch, len(self._slots))
        lost: list[tuple[int, str, int]] = []
        with self._lock:
            for index, records in groups.items():
                link = self._slots[index].link
                if self._stopping:
                    lost.append((index, "shutdown", len(records)))
                elif link is None:
                    lost.append((index, "restarting", len(records)))
                elif len(link.inflight) >= self.settings.analysis_queue_batches:
                    lost.append((index, "overflow", len(records)))
                else:
                    batch_id = next(self._batch_ids)
                    link.inflight[batch_id] = len(records)
                    link.outbox.put(batches.encode(link.generation, batch_id, records))
        for index, reason, count in lost:
            self.metrics.records_lost(index, reason, count)

    # -- monitor ---------------------------------------------------------------------------------------------

    def monitor(self, model: str) -> dict[str, Any] | None:
        return self.store.snapshot(model)

    def models(self) -> list[str]:
        return self.store.list_models()

    # -- workers ---------------------------------------------------------------------------------------------

    def _start_worker(self, slot: _Slot) -> None:
        tasks_receive, tasks_send = self._context.Pipe(duplex=False)
        results_receive, results_send = self._context.Pipe(duplex=False)
        with self._lock:
            slot.generation += 1
            generation = slot.generation
        process = self._context.Process(
            target=worker_module.run, name=f"sidecar-analysis-{slot.index}", daemon=True,
            args=(slot.index, generation, self.settings, str(self.state_dir), tasks_receive, results_send,
                  self._log_level, self.prediction_rules))
        process.start()
        tasks_receive.close()  # the worker holds the only other ends: its death shows up as EOF / EPIPE here
        results_send.close()
        link = _Link(slot.index, generation, process, tasks_send, results_receive)
        link.sender.start()
        with self._lock:
            slot.link = link
            slot.restart_at = None
            if self._stopping:  # stop() began while this worker was starting
                link.outbox.put(_STOP)
        self._wake()

    def _wake(self) -> None:
        if self._wake_write >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_write, b"x")

    def _supervise(self) -> None:
        """Read results, notice exits, restart workers; runs until stopping and every worker is gone."""
        while True:
            with self._lock:
                waiting: dict[Any, tuple[str, _Slot, _Link]] = {}
                for slot in self._slots:
                    link = slot.link
                    if link is None:
                        continue
                    if link.results is not None:
                        waiting[link.results] = ("results", slot, link)
                    waiting[link.process.sentinel] = ("exit", slot, link)
                if self._stopping and not waiting:
                    return
                due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            try:
                ready = wait([*waiting, self._wake_read], timeout)
            except OSError:
                ready = []
            for handle in ready:
                if handle == self._wake_read:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_read, 4096)
                    continue
                kind, slot, link = waiting[handle]
                try:
                    if kind == "results":
                        self._read(link)
                    elif kind == "exit" and slot.link is link:
                        self._exited(slot, link)
                except Exception:  # the supervisor must outlive any one failure
                    log.exception("supervising analysis worker %d failed", slot.index)
            self._restart_due()

    def _read(self, link: _Link) -> None:
        connection = link.results
        if connection is None:
            return
        try:
            messages = connection.recv()
        except (EOFError, OSError):
            link.results = None
            connection.close()
            return
        except Exception:  # an unpicklable message: skip it, keep the pipe
            log.exception("unreadable message from analysis worker %d", link.index)
            return
        self._apply(link, messages)

    def _exited(self, slot: _Slot, link: _Link) -> None:
        while link.results is not None:  # results sent before the exit still count
            try:
                if not link.results.poll(0):
                    break
            except OSError:
                break
            self._read(link)
        if link.results is not None:
            link.results.close()
            link.results = None
        link.process.join(1.0)
        code = link.process.exitcode
        with self._lock:
            lost = sum(link.inflight.values())
            link.inflight.clear()
            slot.link = None
            stopping = self._stopping
            if not stopping:
                quick = time.monotonic() - link.started < QUICK_EXIT_SECONDS
                slot.quick_exits = slot.quick_exits + 1 if quick else 1
                delay = 0.0 if slot.quick_exits <= 1 else min(MAX_RESTART_DELAY, 0.5 * 2 ** (slot.quick_exits - 2))
                slot.restart_at = time.monotonic() + delay
        link.outbox.put(_RETIRE)
        self.metrics.records_lost(slot.index, "shutdown" if stopping else "worker_exit", lost)
        if not stopping:
            log.warning("analysis worker %d (pid %s) exited with code %s; %d records in flight lost; restarting",
                        slot.index, link.process.pid, code, lost)

    def _restart_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [slot for slot in self._slots
                   if slot.restart_at is not None and slot.restart_at <= now and not self._stopping]
        for slot in due:
            try:
                self._start_worker(slot)
            except Exception:
                log.exception("restarting analysis worker %d failed; retrying", slot.index)
                with self._lock:
                    slot.restart_at = time.monotonic() + MAX_RESTART_DELAY
                continue
            self.metrics.worker_restarted(slot.index)

    def _apply(self, link: _Link, messages: list[Result]) -> None:
        for message in messages:
            try:
                if isinstance(message, BatchDone):
                    with self._lock:
                        link.inflight.pop(message.batch_id, None)
                elif isinstance(message, WorkerStarted):
                    link.ready = True
                    continue
                elif isinstance(message, WorkerStopped):
                    continue
                elif isinstance(message, StoredPredictions):
                    self._deliver(message)
                    continue
                self.metrics.apply(message)
                self.store.apply(message)
            except Exception:  # telemetry must never stop the supervisor
                log.exception("applying an analysis result failed")

    def _deliver(self, predictions: StoredPredictions) -> None:
        """Hand predictions over on this (supervisor) thread: per-instance work stays off the event loop."""
        if self.on_predictions is not None:
            _call_hook(self.on_predictions, predictions)


def _call_hook(hook: PredictionsHook, predictions: StoredPredictions) -> None:
    try:
        hook(predictions)
    except Exception:
        log.exception("the predictions hook failed")
