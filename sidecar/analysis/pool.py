"""The analysis worker pool: spawned worker processes, models sharded by a stable hash, each with its capture ring.

Three jobs, three helpers: the capture (`shards`: the rings records wait in, on the request path), the workers'
lives (this module, with `spawning`: start, watch, restart, stop) and their results (`applying`: metrics, the
drill-down store, the predictions hook).

The pool is where the proxies' captures go (`append`, through the `Tee`): each record is written once into the
shared-memory ring of the worker that owns its model (`sidecar.capture.shared_ring`), and a record that does not
fit is dropped and counted, so the proxy never waits for the analysis. Every `capture_batch_size` records, and
every `capture_flush_interval` for the rest, the pool tells the worker which range of its ring to read (`batches`:
a few bytes through a pipe); each worker has at most `analysis_queue_batches` batches in flight, and records wait
in the ring meanwhile.

Everything the pool does in the main process runs on the event loop, in short non-blocking steps, with no thread
of its own (see `pipes` for why). Results are read when the loop sees them arrive, and a worker's exit when its
process sentinel turns readable. Only spawning a process runs in a thread.

Results are applied to the metrics and the monitor store; predictions, reduced by the workers with
`prediction_rules`, go to `on_predictions` (on the loop, so it must be quick). A worker that exits is restarted
(counted, with a growing delay when it keeps dying quickly); its batches in flight are lost and counted, and the
records that were still waiting go to the next one. Model state survives restarts through the state directory
(saved references).

This module imports no numpy: the main process stays light; workers import the numeric stack themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import time
from collections import deque
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.analysis.applying import HistoryHook, PredictionsHook, ResultSink
from sidecar.analysis.metrics import AnalysisMetrics
from sidecar.analysis.monitor import MonitorStore
from sidecar.analysis.pipes import FrameReader, FrameWriter
from sidecar.analysis.shards import CaptureShards
from sidecar.analysis.spawning import MAX_RESTART_DELAY, QUICK_EXIT_SECONDS, restart_delay, spawn_worker
from sidecar.capture.settings import CaptureSettings
from sidecar.messages import batches
from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import (
    BatchDone,
    PredictionReducer,
    PredictionWriter,
    Result,
    WorkerStarted,
    WorkerStopped,
)
from sidecar.telemetry.logs import current_format
from sidecar.worker.settings import AnalysisSettings

log = logging.getLogger(__name__)
STOP_TIMEOUT_SECONDS = 10.0
EXIT_WAIT_SECONDS = 5.0  # after a kill, how long stop() waits to see the exits
LABELS_PER_MESSAGE = 2000  # joined labels per message to a worker (about 80 KB of JSON)


class _Link:
    """One generation of one worker: its process, the pipe ends and its batches in flight."""

    def __init__(self, index: int, generation: int, process: BaseProcess, tasks: FrameWriter,
                 results: FrameReader) -> None:
        self.index = index
        self.generation = generation
        self.process = process
        self.tasks = tasks
        self.results = results
        self.inflight: dict[int, tuple[int, int]] = {}  # batch id -> (where it ends in the ring, records)
        self.frames: deque[bytes] = deque()  # result messages read, not applied yet
        self.applying = False  # an `_apply_next` is scheduled
        self.started = time.monotonic()
        self.ready = False
        self.ended = False  # its exit has been seen: nothing more goes to it


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.generation = 0
        self.link: _Link | None = None
        self.restarting: asyncio.Task[None] | None = None
        self.quick_exits = 0


class AnalysisPool:
    """Worker processes running the detectors, fed by `append`. Every method runs on the event loop that called
    `start`. For the capture metrics it reads like a ring: `len()` (records waiting), `bytes_waiting`, `max_records`,
    `max_bytes`, `appended`, `dropped` (per model) and `drained` (records handed to the workers)."""

    def __init__(self, settings: AnalysisSettings, state_dir: Path, registry: CollectorRegistry,
                 on_predictions: PredictionsHook | None = None, *, model_label_cap: int = 100,
                 capture: CaptureSettings | None = None, prediction_rules: PredictionReducer | None = None,
                 upstreams: tuple[tuple[str, int] | None, tuple[str, int] | None] = (None, None),
                 on_history: HistoryHook | None = None, prediction_writer: PredictionWriter | None = None) -> None:
        """`upstreams`: the model server's REST and gRPC addresses, which workers ask for model signatures;
        `on_history` takes each closed history bucket (on the loop, so it must be quick); `prediction_writer`: the
        store's writer with which the workers write their predictions before sending them to `on_predictions`."""
        settings.check()
        capture = capture or CaptureSettings()
        self.settings = settings
        self.upstreams = upstreams
        self.state_dir = Path(state_dir)
        self.on_predictions = on_predictions
        # how the workers reduce predictions for the hook; none are sent when nobody takes them
        if on_predictions is not None and prediction_rules is None:
            raise ValueError("on_predictions needs the prediction_rules that reduce what it receives")
        self.prediction_rules = None if on_predictions is None else prediction_rules
        self.prediction_writer = None if on_predictions is None else prediction_writer
        self.batch_records = capture.capture_batch_size
        self.flush_interval = capture.capture_flush_interval
        self.shards = CaptureShards(settings.workers, capture)
        self._rings = self.shards.rings
        self.drained = 0
        self._publishing = False  # a `_publish_all` is scheduled
        self._flusher: asyncio.Task[None] | None = None
        self.metrics = AnalysisMetrics(registry, settings.max_feature_labels, model_label_cap)
        self.store = MonitorStore()
        self.results = ResultSink(self.metrics, self.store, on_predictions, on_history)
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
        self._flusher = self._loop.create_task(self._flush(), name="analysis-flush")

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
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for slot in self._slots:
            if slot.restarting is not None:
                slot.restarting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.restarting
                slot.restarting = None
            if slot.link is not None:
                self._publish(slot, partial=True, limited=False)  # what waits in the ring goes before the stop
                slot.link.tasks.send(batches.STOP)
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
        for slot, ring in zip(self._slots, self._rings, strict=True):
            self.metrics.records_lost(slot.index, "shutdown", ring.records)
        self.shards.close()

    def worker_pids(self) -> list[int | None]:
        """Process id of each worker (None while it waits to restart)."""
        return [slot.link.process.pid if slot.link is not None else None for slot in self._slots]

    def alive(self) -> int:
        """Workers running (started and not yet seen to exit)."""
        return sum(1 for slot in self._slots if slot.link is not None)

    # -- capture ---------------------------------------------------------------------------------------------

    def append(self, record: CaptureRecord) -> None:
        """Capture one exchange for the analysis: on the request path, so it only copies the record into the ring
        of the worker owning its model (`shards`). A record that does not fit is dropped and counted."""
        shards = self.shards
        if record.shadow:
            shards.shadow_appended += 1
        else:
            shards.appended += 1
        owner = shards.owner(record.model)
        if self._stopping:
            self.metrics.records_lost(owner, "shutdown", 1)
            return
        if shards.append(record, owner) and not self._publishing:
            self._publishing = True
            assert self._loop is not None, "start() first"
            self._loop.call_soon(self._publish_all)

    # what the capture metrics read, as of a ring
    @property
    def appended(self) -> int:
        return self.shards.appended

    @property
    def shadow_appended(self) -> int:
        return self.shards.shadow_appended

    @property
    def dropped(self) -> dict[str, int]:
        return self.shards.dropped

    @property
    def max_records(self) -> int:
        return self.shards.max_records

    @property
    def max_bytes(self) -> int:
        return self.shards.max_bytes

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def bytes_waiting(self) -> int:
        return self.shards.bytes_waiting

    def _publish_all(self, partial: bool = False) -> None:
        self._publishing = False
        for slot in self._slots:
            self._publish(slot, partial)

    def _publish(self, slot: _Slot, partial: bool, limited: bool = True) -> None:
        """Tell the slot's worker which records to read next: whole batches, and with `partial` the rest too;
        `limited`: only while it has fewer than `analysis_queue_batches` batches in flight."""
        link = slot.link
        if link is None:
            return
        ring = self._rings[slot.index]
        most = self.settings.analysis_queue_batches
        while ring.unpublished >= (1 if partial else self.batch_records) and (
                not limited or len(link.inflight) < most):
            start, end, records = ring.publish()
            batch_id = next(self._batch_ids)
            link.inflight[batch_id] = (end, records)
            link.tasks.send(batches.encode(batches.Batch(link.generation, batch_id, start, end, records)))
            self.drained += records

    async def _flush(self) -> None:
        """Every flush interval, hand the workers what waits in their rings, whole batch or not."""
        while True:
            await asyncio.sleep(self.flush_interval)
            self._publish_all(partial=True)

    # -- monitor ---------------------------------------------------------------------------------------------

    def monitor(self, model: str, extremes: bool = False) -> dict[str, Any] | None:
        return self.store.snapshot(model, extremes)

    def models(self) -> list[str]:
        return self.store.list_models()

    def reset_reference(self, model: str) -> bool | None:
        """Ask the worker owning `model` to forget its reference and collect a new one; False when that worker is
        not running (try again once it is), None when the analysis has never seen the model."""
        if model not in self.store.list_models():
            return None
        link = self._slots[self.shards.owner(self.settings.served_name(model))].link
        if link is None:
            return False
        link.tasks.send(batches.encode_reset(model))
        self.store.forget_windows(model)
        self.metrics.forget_decisions(model)
        return True

    def send_labels(self, model: str, labels: list[tuple[str, int, bool]]) -> None:
        """Tell the worker analysing `model` which of its predictions were right (joined feedback): the quality
        estimate calibrates on them. Dropped when that worker is not running or the analysis never saw the model."""
        if not labels or not self.settings.quality_estimation or not self.store.knows(model):
            return
        link = self._slots[self.shards.owner(self.settings.served_name(model))].link
        if link is None:
            return
        for start in range(0, len(labels), LABELS_PER_MESSAGE):
            link.tasks.send(batches.encode_labels(model, labels[start:start + LABELS_PER_MESSAGE]))

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
            link.tasks.send(batches.STOP)

    def _spawn(self, index: int, generation: int) -> tuple[BaseProcess, int, int]:
        return spawn_worker(self._context, index, (index, generation, self.settings, str(self.state_dir),
                                                   self._rings[index].handle, self._log_level, self.prediction_rules,
                                                   self.upstreams, current_format(), self.prediction_writer))

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
        link.ended = True
        frames, _ = link.results.read()  # results sent before the exit still count: the pipe holds less than one read
        link.frames.extend(frames)
        while link.frames:
            self._apply_frame(link, link.frames.popleft())
        if not link.results.closed:
            loop.remove_reader(link.results.fd)
            link.results.close()
        link.tasks.close()
        lost = self._rings[slot.index].reset()
        link.inflight.clear()
        slot.link = None
        self.metrics.records_lost(slot.index, "shutdown" if self._stopping else "worker_died", lost)
        if not self._stopping:
            log.warning("analysis worker %d (pid %s) exited; %d records in flight lost; restarting",
                        slot.index, link.process.pid, lost)

    async def _restart(self, slot: _Slot, link: _Link) -> None:
        """Reap the old process, wait the restart delay, then start the next generation (retrying on failure)."""
        await asyncio.to_thread(link.process.join, 1.0)
        quick = time.monotonic() - link.started < QUICK_EXIT_SECONDS
        slot.quick_exits = slot.quick_exits + 1 if quick else 1
        delay = restart_delay(slot.quick_exits)
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
        """Messages about the worker itself change its link; the rest go to the result sink."""
        for message in messages:
            if isinstance(message, WorkerStarted):
                link.ready = True
                continue
            if isinstance(message, WorkerStopped):
                continue
            if isinstance(message, BatchDone):
                self._batch_done(link, message.batch_id)
            self.results.apply(message)

    def _batch_done(self, link: _Link, batch_id: int) -> None:
        """The worker is done with a batch: its part of the ring is free, and the next batch can go."""
        done = link.inflight.pop(batch_id, None)
        slot = self._slots[link.index]
        if done is not None and slot.link is link:
            self._rings[link.index].release(*done)
            if not (self._stopping or link.ended):
                self._publish(slot, partial=False)
