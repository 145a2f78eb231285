"""A small sample of a model's latest analysed inputs, saved next to its reference for the feature importance.

Why a file beside `reference.npz` rather than a message to the main process: the explainer process that computes
the importance already reads the reference from the model's state directory, so reading the recent rows from the
same place adds no channel, no numpy in the main process and no bytes on the path results take; the worker writes
a few kilobytes at most every `save_every` seconds, off the request path, atomically (a reader never sees half a
file). Kept only while `importance_enabled` is on: nothing is kept or written otherwise.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

RECENT_FILE = "recent.npz"


class RecentSample:
    """The last `rows` analysed input rows (complete rows only), written to `<directory>/recent.npz`."""

    def __init__(self, directory: Path, rows: int, save_every: float) -> None:
        self.path = directory / RECENT_FILE
        self.rows = rows
        self.save_every = save_every
        self._kept: np.ndarray | None = None
        self._changed = False
        self._saved_at = -float("inf")

    def add(self, inputs: np.ndarray) -> None:
        complete = inputs[np.all(np.isfinite(inputs), axis=1)] if inputs.size else inputs
        if complete.shape[0] == 0:
            return
        if self._kept is not None and self._kept.shape[1] != complete.shape[1]:
            self._kept = None
        joined = complete if self._kept is None else np.concatenate([self._kept, complete], axis=0)
        self._kept = np.array(joined[-self.rows:], dtype=np.float64)
        self._changed = True

    def save_if_due(self, now: float | None = None) -> bool:
        """Write the sample when it changed and `save_every` has passed since the last write; True when written."""
        now = time.monotonic() if now is None else now
        if not self._changed or self._kept is None or now - self._saved_at < self.save_every:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{RECENT_FILE}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, inputs=self._kept, saved=np.float64(time.time()))
        os.replace(temporary, self.path)
        self._changed, self._saved_at = False, now
        return True

    def clear(self) -> None:
        """Forget the sample and its file (the reference was reset: its rows are not comparable any more)."""
        self._kept, self._changed = None, False
        self.path.unlink(missing_ok=True)
