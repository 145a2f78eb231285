"""The analysis worker pool: spawned worker processes, models sharded by a stable hash, bounded batches in flight.

Everything the pool does in the main process runs on the event loop, in short non-blocking steps, with no thread
of its own (see `pipes` for why): the capture ring's drainer calls `free_slots()` (how many records the pool takes
now) and `submit(batch)`, which splits a batch by worker, encodes it (`batches`: the small fields pickled as
columns in one C call, the bodies left where they are) and hands the frame to the worker's `FrameWriter`, which
writes what the pipe takes and the rest when the loop sees room. Results are read when the loop sees them arrive,
and a worker's exit when its process sentinel turns readable. Only spawning a process runs in a thread.

Each worker holds at most `analysis_queue_batches` batches in flight; when any worker is full, `free_slots()` is 0
and records wait in the ring, which drops the oldest and counts them, so the proxy never waits for the analysis.

Results are applied to the metrics and the monitor store; predictions, reduced by the workers with
`prediction_rules`, go to `on_predictions` (on the loop, so it must be quick). A worker that exits is restarted
(counted, with a growing delay when it keeps dying quickly); its batches in flight are lost and counted. Model
state survives restarts through the state directory (saved references).

This module imports no numpy: the main process stays light; workers import the numeric stack themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import time
import zlib
from collections import deque
from collections.abc import Callable
from multiprocessing import get_context
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
from sidecar.detect.pipes import FrameReader, FrameWriter
from sidecar.detect.results import BatchDone, Result, StoredPredictions, WorkerStarted, WorkerStopped
from sidecar.detect.settings import AnalysisSettings
from sidecar.feedback.tasks import PredictionRules

log = logging.getLogger(__name__)
PredictionsHook = Callable[[StoredPredictions], None]
QUICK_EXIT_SECONDS = 30.0  # a worker that dies sooner than this after starting counts as crash-looping
MAX_RESTART_DELAY = 30.0
STOP_TIMEOUT_SECONDS = 10.0
EXIT_WAIT_SECONDS = 5.0  # after a kill, how long stop() waits to see the exits
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
    """One generation of one worker: its process, the pipe ends and its batches in flight."""

    def __init__(self, index: int, generation: int, process: BaseProcess, tasks: FrameWriter,
                 results: FrameReader) -> None:
        self.index = index
        self.generation = generation
        self.process = process
        self.tasks = tasks
        self.results = results
        self.inflight: dict[int, int] = {}  # batch id -> records
        self.frames: deque[bytes] = deque()  # result messages read, not applied yet
        self.applying = False  # an `_apply_next` is scheduled
        self.started = time.monotonic()
        self.ready = False


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.link: _Link | None = None
        self.restarting: asyncio.Task[None] | None = None
        self.quick_exits = 0


class AnalysisPool:
    """Worker processes running the detectors; a capture-ring consumer (`free_slots`, `submit`). Every method
    runs on the event loop that called `start`."""

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
        self._batch_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._log_level = logging.getLogger().getEffectiveLevel()
        for index in range(settings.workers):
            self.metrics.restarts.labels(str(index))
        self.metrics.workers_alive.set_function(self.alive)

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the workers. They get ready in the background."""
        self._loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for slot in self._slots:
            await self._start_worker(slot)

    async def wait_ready(self, timeout: float) -> bool:
        """True once every worker has reported it started (imports done), False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(slot.link is not None and slot.link.ready for slot in self._slots):
                return True
            await asyncio.sleep(0.02)
        return False

    async def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let workers finish the batches they hold, within `timeout` seconds; then kill what is left."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._stopping = True
        for slot in self._slots:
            if slot.restarting is not None:
                slot.restarting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.restarting
                slot.restarting = None
            if slot.link is not None:
                slot.link.tasks.send([batches.STOP])
        while time.monotonic() < deadline and self.alive():
            await asyncio.sleep(0.02)
        for slot in self._slots:
            if slot.link is not None:
                with contextlib.suppress(Exception):
                    slot.link.process.kill()
        deadline = time.monotonic() + EXIT_WAIT_SECONDS
        while time.monotonic() < deadline and self.alive():
            await asyncio.sleep(0.02)
        for slot in self._slots:  # exits not seen in time: let go of them anyway
            if slot.link is not None:
                self._exited(slot, slot.link)

    def worker_pids(self) -> list[int | None]:
        """Process id of each worker (None while it waits to restart)."""
        return [slot.link.process.pid if slot.link is not None else None for slot in self._slots]

    def alive(self) -> int:
        """Workers running (started and not yet seen to exit)."""
        return sum(1 for slot in self._slots if slot.link is not None)

    # -- consumer protocol ----------------------------------------------------------------------------------

    def free_slots(self) -> int:
        """Records the pool takes now: one batch per free in-flight slot of the busiest worker."""
        if self._stopping:
            return 0
        links = [slot.link for slot in self._slots if slot.link is not None]
        if not links:
            return 0
        free = min(self.settings.analysis_queue_batches - len(link.inflight) for link in links)
        return max(0, free) * self.batch_records

    def submit(self, batch: list[CaptureRow]) -> None:
        """Queue records to the workers owning their models; never blocks. Records no worker can take are lost
        and counted (a worker waiting to restart, or a caller that ignored `free_slots`)."""
        for index, records in split_by_worker(batch, len(self._slots)).items():
            link = self._slots[index].link
            if self._stopping:
                self.metrics.records_lost(index, "shutdown", len(records))
            elif link is None:
                self.metrics.records_lost(index, "restarting", len(records))
            elif len(link.inflight) >= self.settings.analysis_queue_batches:
                self.metrics.records_lost(index, "overflow", len(records))
            else:
                batch_id = next(self._batch_ids)
                link.inflight[batch_id] = len(records)
                link.tasks.send(batches.encode(link.generation, batch_id, records))

    # -- monitor ---------------------------------------------------------------------------------------------

    def monitor(self, model: str) -> dict[str, Any] | None:
        return self.store.snapshot(model)

    def models(self) -> list[str]:
        return self.store.list_models()

    # -- workers ---------------------------------------------------------------------------------------------

    async def _start_worker(self, slot: _Slot) -> None:
        """Spawn the slot's next generation (in a thread: spawning blocks) and watch its pipes and exit."""
        loop = self._loop
        assert loop is not None, "start() first"
        slot.generation += 1
        process, tasks, results = await asyncio.to_thread(self._spawn, slot.index, slot.generation)
        link = _Link(slot.index, slot.generation, process, FrameWriter(tasks, loop), FrameReader(results))
        slot.link = link
        loop.add_reader(link.results.fd, self._on_results, link)
        loop.add_reader(process.sentinel, self._on_exit, slot, link)
        if self._stopping:  # stop() began while this worker was starting
            link.tasks.send([batches.STOP])

    def _spawn(self, index: int, generation: int) -> tuple[BaseProcess, int, int]:
        """Start a worker process; its task pipe's writing end and its result pipe's reading end, as plain fds."""
        tasks_receive, tasks_send = self._context.Pipe(duplex=False)
        results_receive, results_send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_module.run, name=f"sidecar-analysis-{index}", daemon=True,
            args=(index, generation, self.settings, str(self.state_dir), tasks_receive, results_send,
                  self._log_level, self.prediction_rules))
        try:
            process.start()
        finally:
            tasks_receive.close()  # the worker holds the only other ends: its death shows up as EOF / EPIPE here
            results_send.close()
        ends = os.dup(tasks_send.fileno()), os.dup(results_receive.fileno())
        tasks_send.close()
        results_receive.close()
        return process, *ends

    def _on_results(self, link: _Link) -> None:
        """The worker's result pipe is readable: queue the complete messages and apply the first; forget the pipe
        at its end."""
        frames, ended = link.results.read()
        link.frames.extend(frames)
        if ended and not link.results.closed:
            assert self._loop is not None
            self._loop.remove_reader(link.results.fd)
            link.results.close()
        if not link.applying:
            self._apply_next(link)

    def _apply_next(self, link: _Link) -> None:
        """Apply one queued message, then let the loop run whatever waits (requests) before the next: a second's
        merged results come in several messages of up to ~256 items each, and applying them at once held the
        loop for up to a few hundred microseconds."""
        if not link.frames:
            link.applying = False
            return
        self._apply_frame(link, link.frames.popleft())
        link.applying = bool(link.frames)
        if link.applying:
            assert self._loop is not None
            self._loop.call_soon(self._apply_next, link)

    def _apply_frame(self, link: _Link, frame: bytes) -> None:
        try:
            messages = pickle.loads(frame)
        except Exception:  # an unreadable message: skip it, keep the pipe
            log.exception("unreadable message from analysis worker %d", link.index)
            return
        self._apply(link, messages)

    def _on_exit(self, slot: _Slot, link: _Link) -> None:
        """The worker's process ended: count what it held, and restart it unless the pool is stopping."""
        if slot.link is not link:
            return
        self._exited(slot, link)
        if not self._stopping:
            slot.restarting = asyncio.get_running_loop().create_task(
                self._restart(slot, link), name=f"analysis-restart-{slot.index}")

    def _exited(self, slot: _Slot, link: _Link) -> None:
        loop = self._loop
        assert loop is not None
        loop.remove_reader(link.process.sentinel)
        frames, _ = link.results.read()  # results sent before the exit still count: the pipe holds less than one read
        link.frames.extend(frames)
        while link.frames:
            self._apply_frame(link, link.frames.popleft())
        if not link.results.closed:
            loop.remove_reader(link.results.fd)
            link.results.close()
        link.tasks.close()
        lost = sum(link.inflight.values())
        link.inflight.clear()
        slot.link = None
        self.metrics.records_lost(slot.index, "shutdown" if self._stopping else "worker_exit", lost)
        if not self._stopping:
            log.warning("analysis worker %d (pid %s) exited; %d records in flight lost; restarting",
                        slot.index, link.process.pid, lost)

    async def _restart(self, slot: _Slot, link: _Link) -> None:
        """Reap the old process, wait the restart delay, then start the next generation (retrying on failure)."""
        await asyncio.to_thread(link.process.join, 1.0)
        quick = time.monotonic() - link.started < QUICK_EXIT_SECONDS
        slot.quick_exits = slot.quick_exits + 1 if quick else 1
        delay = 0.0 if slot.quick_exits <= 1 else min(MAX_RESTART_DELAY, 0.5 * 2 ** (slot.quick_exits - 2))
        log.info("analysis worker %d exited with code %s; restarting in %.1f s",
                 slot.index, link.process.exitcode, delay)
        await asyncio.sleep(delay)
        while not self._stopping:
            starting = asyncio.ensure_future(self._start_worker(slot))
            try:
                await asyncio.shield(starting)
            except asyncio.CancelledError:  # stop() began: let the spawn finish, so its worker is told to stop
                with contextlib.suppress(Exception):
                    await starting
                raise
            except Exception:
                log.exception("restarting analysis worker %d failed; retrying", slot.index)
                await asyncio.sleep(MAX_RESTART_DELAY)
                continue
            self.metrics.worker_restarted(slot.index)
            break
        slot.restarting = None

    def _apply(self, link: _Link, messages: list[Result]) -> None:
        for message in messages:
            try:
                if isinstance(message, BatchDone):
                    link.inflight.pop(message.batch_id, None)
                elif isinstance(message, WorkerStarted):
                    link.ready = True
                    continue
                elif isinstance(message, WorkerStopped):
                    continue
                elif isinstance(message, StoredPredictions):
                    if self.on_predictions is not None:
                        _call_hook(self.on_predictions, message)
                    continue
                self.metrics.apply(message)
                self.store.apply(message)
            except Exception:  # telemetry must never stop the analysis
                log.exception("applying an analysis result failed")


def _call_hook(hook: PredictionsHook, predictions: StoredPredictions) -> None:
    try:
        hook(predictions)
    except Exception:
        log.exception("the predictions hook failed")
