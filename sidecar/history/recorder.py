"""Where closed history buckets go in the main process: their labels are folded in, then they are queued for the
store and for the Anodot export.

Runs on the event loop and only queues: the store writes on its own thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from sidecar.history.labels import PendingLabels
from sidecar.history.store import HistoryStore
from sidecar.messages.results import HistoryBucket, JoinedTruth
from sidecar.telemetry.admin import json_safe

MAX_EXPORT_QUEUE = 10_000  # buckets waiting for the Anodot exporter (the oldest go first)


class HistoryRecorder:
    def __init__(self, store: HistoryStore, max_levels: int, export: bool = False) -> None:
        self.store = store
        self.labels = PendingLabels(max_levels)
        self.recorded = 0
        self._export: deque[tuple[str, dict[str, Any]]] | None = deque(maxlen=MAX_EXPORT_QUEUE) if export else None

    def add_bucket(self, bucket: HistoryBucket) -> None:
        """A worker closed a bucket: add the labels joined before its end and store it."""
        body: dict[str, Any] = {
            "start": bucket.start, "end": bucket.end, "instances": bucket.instances, "requests": bucket.requests,
            "inputs": bucket.inputs, "outputs": bucket.outputs, "labels": self.labels.take(bucket.model, bucket.end),
            "drift": bucket.drift, "outliers": bucket.outliers, "bucket": bucket.bucket,
        }
        if bucket.sampled:
            body["sampled"] = True
        body = json_safe(body)
        self.store.put(bucket.model, bucket.start, bucket.end, body)
        self.recorded += 1
        if self._export is not None:
            self._export.append((bucket.model, body))

    def add_truths(self, truths: Iterable[JoinedTruth]) -> None:
        """Truths the feedback service joined (their labels go to each model's next bucket)."""
        for truth in truths:
            self.labels.add(truth)

    def take_exported(self) -> list[tuple[str, dict[str, Any]]]:
        """(model, bucket) of the buckets recorded since the last call, for the Anodot exporter."""
        if self._export is None:
            return []
        taken = list(self._export)
        self._export.clear()
        return taken
