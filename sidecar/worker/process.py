"""The analysis worker process: receive batches, run the model states, send small results back.

This module is imported by the main process only to name `run` as the spawn target, so it imports nothing heavy
at module level: numpy, scipy and the detectors load inside the worker, in `run`.

Protocol (both directions over one-way pipes): the main process sends batches (`batches`: which range of the
worker's shared capture ring to read) and finally `batches.STOP` (finish the queued batches, then exit); the worker
sends lists of results, `WorkerStarted` first and
`WorkerStopped` last. Each batch's `BatchDone` goes at once, alone (it frees the batch's slot in the pool); the
other results are held and merged (`coalesce`) and go at most once per `result_interval`, in lists of bounded
size, and before `WorkerStopped`. An end-of-file on the task pipe (the main process died) also ends the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.capture.shared_ring import RingHandle, SharedRingReader
from sidecar.messages import batches
from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import (
    LAG_BUCKETS,
    BatchDone,
    PredictionReducer,
    Predictions,
    PredictionWriter,
    Result,
    WorkerStarted,
    WorkerStopped,
    bucket_counts,
)
from sidecar.telemetry.logs import configure as configure_logs
from sidecar.worker.coalesce import ResultBuffer
from sidecar.worker.settings import AnalysisSettings
from sidecar.worker.storing import StoreWriting

if TYPE_CHECKING:
    from sidecar.worker.state import AnalysisState

TICK_SECONDS = 1.0
HEAP_TOP_PAD_BYTES = 64 * 1024 * 1024
_M_TOP_PAD = -2  # glibc's malloc.h
log = logging.getLogger(__name__)


def run(worker: int, generation: int, settings: AnalysisSettings, state_dir: str, ring: RingHandle,
        tasks: Connection, results: Connection, log_level: int = logging.WARNING,
        prediction_rules: PredictionReducer | None = None,
        upstreams: tuple[tuple[str, int] | None, tuple[str, int] | None] = (None, None),
        log_format: str = "text", prediction_writer: PredictionWriter | None = None) -> None:
    """Worker main loop (the spawn target). Records are read from `ring` as batches name them. Predictions are
    reduced with `prediction_rules` and sent as `StoredPredictions`, written into the store first with
    `prediction_writer` when there is one (`storing`); without rules (nobody stores them) they are not sent.

    The worker starts at the priority it was spawned with and lowers it (`worker_priority`) only once it has
    analysed its first batch: at idle priority on a busy machine, a respawned worker's imports and first batch
    waited seconds for CPU the proxy was using, and the analysis stayed off that long."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    keep_heap_memory()
    single_threaded_math()
    configure_logs(log_level, log_format, process=f"analysis-{worker}")
    from sidecar.worker.signature import SignatureFetcher
    from sidecar.worker.state import AnalysisState

    signatures = SignatureFetcher(*upstreams) if settings.signature_lookup else None
    state = AnalysisState(worker, settings, Path(state_dir), signatures)
    reader = SharedRingReader(ring)
    storing = StoreWriting(prediction_writer) if prediction_writer is not None else None
    try:
        results.send([WorkerStarted(worker, generation, os.getpid())])
        _serve(worker, generation, state, reader, tasks, results, prediction_rules,
               settle=lambda: lower_priority(settings.worker_priority), storing=storing)
        results.send([WorkerStopped(worker, generation)])
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the main process is gone: nothing left to report to
    finally:
        if storing is not None:
            storing.close()
        reader.close()
        tasks.close()
        results.close()


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_math() -> None:
    """One worker uses one CPU: numpy's BLAS would otherwise start a thread per core (set before numpy loads;
    a variable the operator set wins). Scale the analysis with `--workers` instead.

    With two BLAS threads the worker filled both vCPUs of a 2-vCPU VM, even at idle priority, and the proxy's p99
    at 4 paced connections was about twice what it was with one (bench/bench_analysis_load.py).
    """
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def keep_heap_memory() -> bool:
    """Ask glibc's malloc to keep 64 MiB of freed memory at the top of the heap instead of handing it back at once.

    The detectors allocate and free arrays of a few MB for every window. With glibc's defaults the heap shrank and
    grew again all the time, and a saturated worker spent 22% of its CPU time in the kernel faulting fresh pages
    in; with the pad it spent none there, and the analysis got that time (the worker's computation at
    bench_analysis_load.py's settings, 10 s of /proc/PID/stat). Whether it was set: not without glibc.
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_TOP_PAD, HEAP_TOP_PAD_BYTES))
    except (OSError, AttributeError):
        return False


def lower_priority(priority: str) -> None:
    """Make this process (and threads it starts later, e.g. BLAS) yield the CPU to the proxy.

    With analysis saturated on a 2-core machine, a worker at normal priority raised the proxy's p99 about tenfold;
    SCHED_IDLE runs it only on CPU time nothing else wants, so a busy proxy drops records at the ring instead.
    """
    if priority == "normal":
        return
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
    with contextlib.suppress(OSError):
        os.nice(19 if priority == "idle" else 10)


def _serve(worker: int, generation: int, state: AnalysisState, reader: SharedRingReader, tasks: Connection,
           results: Connection, rules: PredictionReducer | None = None,
           settle: Callable[[], None] | None = None, storing: StoreWriting | None = None) -> None:
    """Serve batches until STOP; `settle` is called once, after the first batch."""
    interval = state.settings.result_interval
    held = ResultBuffer()
    sent_at = -math.inf
    next_tick = time.monotonic() + TICK_SECONDS
    while True:
        due = next_tick if not held else min(next_tick, sent_at + interval)
        if tasks.poll(max(0.0, due - time.monotonic())):
            message = tasks.recv_bytes()
            if message == batches.STOP:
                _send_held(held, results, storing)
                return
            model = batches.reset_model(message)
            if model is not None:
                held.extend(state.reset_reference(model))
                continue
            labelled = batches.labels_of(message)
            if labelled is not None:
                held.extend(state.label(*labelled))
                continue
            started = time.process_time()
            batch = batches.decode(message)
            found, done = _process(worker, generation, state, batch.batch_id, reader.read(batch.start, batch.end))
            held.extend(_for_the_store(found, rules))
            results.send([done])
            if settle is not None:
                settle()
                settle = None
            if held and time.monotonic() - sent_at >= interval:
                _send_held(held, results, storing)
                sent_at = time.monotonic()
            _keep_cpu_share(time.process_time() - started, state.settings.worker_cpu_share)
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + TICK_SECONDS
            held.extend(_for_the_store(state.tick(time.time()), rules))
        if held and now - sent_at >= interval:
            _send_held(held, results, storing)
            sent_at = now


def _for_the_store(found: list[Result], rules: PredictionReducer | None) -> list[Result]:
    """Raw predictions reduced for the feedback store, or left out when there are no rules."""
    if rules is None:
        return [result for result in found if not isinstance(result, Predictions)]
    return [rules.reduce(result) if isinstance(result, Predictions) else result for result in found]


def _send_held(held: ResultBuffer, results: Connection, storing: StoreWriting | None = None) -> None:
    parts = held.take_parts()
    if storing is not None:
        parts = storing.write(parts)
    for part in parts:
        results.send(part)


def _keep_cpu_share(busy: float, share: float) -> None:
    """Pause so this batch's CPU time is at most `share` of the wall time it spans.

    A cap for small nodes where the analysis should take less than the CPU the proxy leaves; by default (1.0) an
    idle-priority worker uses all of it.
    """
    if share < 1.0 and busy > 0.0:
        time.sleep(busy * (1.0 - share) / share)


def _process(worker: int, generation: int, state: AnalysisState, batch_id: int,
             records: list[CaptureRecord]) -> tuple[list[Result], BatchDone]:
    out, errors, analysed = state.process(records)
    now = time.time()
    lags = bucket_counts([max(0.0, now - record.time) for record in records if record.ok], LAG_BUCKETS)
    return out, BatchDone(worker, generation, batch_id, len(records), lags, errors, analysed)
