"""A worker writes its predictions into the feedback store before sending them (`sidecar.feedback.store` says why).

A write that fails (the store locked past its timeout, Redis unreachable) loses nothing: the predictions go to the
main process unwritten and its writer thread stores them, as it would for any sender. The worker says so once in
its log and then leaves the store alone for `RETRY_SECONDS`, so an unreachable store never holds up the analysis
for a timeout per send; a write that succeeds again is logged once too.
"""

from __future__ import annotations

import logging
import time

from sidecar.messages.results import PredictionWriter, Result, StoredPredictions

RETRY_SECONDS = 30.0
log = logging.getLogger(__name__)


class StoreWriting:
    def __init__(self, writer: PredictionWriter, retry_seconds: float = RETRY_SECONDS) -> None:
        self.writer = writer
        self.retry_seconds = retry_seconds
        self._paused_until = 0.0
        self._failing = False

    def write(self, parts: list[list[Result]]) -> list[list[Result]]:
        """`parts` with their predictions written and marked so, or as they were when the store did not take them."""
        predictions = [result for part in parts for result in part if isinstance(result, StoredPredictions)]
        if not predictions or time.monotonic() < self._paused_until:
            return parts
        try:
            self.writer.write(predictions)
        except Exception as exc:
            self._paused_until = time.monotonic() + self.retry_seconds
            if not self._failing:
                self._failing = True
                log.warning("writing predictions to the store failed (%s); the main process stores them until a "
                            "write here succeeds again (next try in %g s)", exc, self.retry_seconds)
            self.writer.close()
            return parts
        if self._failing:
            self._failing = False
            log.info("writing predictions to the store works again")
        return [[result._replace(written=True) if isinstance(result, StoredPredictions) else result
                 for result in part] for part in parts]

    def close(self) -> None:
        self.writer.close()
