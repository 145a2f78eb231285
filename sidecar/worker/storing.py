"""A worker writes its predictions into the feedback store before sending them (`sidecar.feedback.store` says why).

The write runs on a thread of its own, started before the worker lowers its CPU priority: on Linux the priority is
per thread, so the worker's analysis runs at idle priority while this thread keeps the normal policy (at nice +10).
An idle-priority thread can wait seconds for a CPU on a busy node, and one caught inside a write would hold the
store's lock (SQLite's single writer) while the main process's feedback claims waited behind it. The worker waits
for each write to finish: predictions are marked written only once they are.

A write that fails (the store locked past its timeout, Redis unreachable) loses nothing: the predictions go to the
main process unwritten and its writer thread stores them, as it would for any sender. The worker says so once in
its log and then leaves the store alone for `RETRY_SECONDS`, so an unreachable store never holds up the analysis
for a timeout per send; a write that succeeds again is logged once too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence

from sidecar.messages.results import PredictionWriter, Result, StoredPredictions

RETRY_SECONDS = 30.0
WRITER_NICE = 10  # added to the writer thread's nice value: it yields to the proxy, never starves as idle would
STOP_SECONDS = 10.0  # longest `close` waits for a write in progress
log = logging.getLogger(__name__)


class StoreWriting:
    def __init__(self, writer: PredictionWriter, retry_seconds: float = RETRY_SECONDS) -> None:
        self.writer = writer
        self.retry_seconds = retry_seconds
        self._paused_until = 0.0
        self._failing = False
        self._jobs: queue.SimpleQueue[Sequence[StoredPredictions] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self.thread.start()

    def write(self, parts: list[list[Result]]) -> list[list[Result]]:
        """`parts` with their predictions written and marked so, or as they were when the store did not take them."""
        predictions = [result for part in parts for result in part if isinstance(result, StoredPredictions)]
        if not predictions or time.monotonic() < self._paused_until:
            return parts
        try:
            self._write(predictions)
        except Exception as exc:
            self._paused_until = time.monotonic() + self.retry_seconds
            if not self._failing:
                self._failing = True
                log.warning("writing predictions to the store failed (%s); the main process stores them until a "
                            "write here succeeds again (next try in %g s)", exc, self.retry_seconds)
            return parts
        if self._failing:
            self._failing = False
            log.info("writing predictions to the store works again")
        return [[result._replace(written=True) if isinstance(result, StoredPredictions) else result
                 for result in part] for part in parts]

    def close(self) -> None:
        self._jobs.put(None)
        self.thread.join(STOP_SECONDS)

    def _write(self, predictions: Sequence[StoredPredictions]) -> None:
        self._jobs.put(predictions)
        error = self._done.get()
        if error is not None:
            raise error

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: the thread shares the process's priority
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + WRITER_NICE))
        while (predictions := self._jobs.get()) is not None:
            try:
                self.writer.write(predictions)
            except BaseException as exc:  # whatever it is, the waiting worker hears of it
                self.writer.close()  # connect again on the next try
                self._done.put(exc)
            else:
                self._done.put(None)
        self.writer.close()
