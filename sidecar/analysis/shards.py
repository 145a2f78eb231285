"""Where captured records wait for the analysis: one shared-memory ring per worker, models sharded by name.

The request path's part of the analysis: `append` copies a record into the ring of the worker that owns its model
(`sidecar.capture.shared_ring`) and never waits; a record that does not fit is dropped and counted per model. The
pool reads the rest (`ring(index)`) to tell each worker which range to read.
"""

from __future__ import annotations

import zlib

from sidecar.capture.settings import CaptureSettings
from sidecar.capture.shared_ring import SharedRingWriter
from sidecar.messages.records import CaptureRecord

MAX_OWNERS_CACHED = 10_000  # model -> worker lookups kept for the request path


def shard(model: str, workers: int) -> int:
    """The worker that owns `model`: a hash that is the same in every process and every run."""
    return zlib.crc32(model.encode("utf-8", "surrogatepass")) % workers


class CaptureShards:
    """The workers' rings, split from the capture limits. For the capture metrics it reads like a ring: `len()`
    (records waiting), `bytes_waiting`, `max_records`, `max_bytes`, `appended` and `dropped` (per model)."""

    def __init__(self, workers: int, capture: CaptureSettings) -> None:
        self.batch_records = capture.capture_batch_size
        self.max_records = capture.capture_max_records
        self.max_bytes = capture.capture_max_bytes
        self.rings = [SharedRingWriter(max(1024, self.max_bytes // workers), max(1, self.max_records // workers),
                                       self.batch_records) for _ in range(workers)]
        self.appended = 0  # exchanges
        self.shadow_appended = 0  # shadow answers paired with an exchange's (CaptureRecord.shadow)
        self.dropped: dict[str, int] = {}
        self._owners: dict[str, int] = {}

    def owner(self, model: str) -> int:
        owner = self._owners.get(model)
        if owner is None:
            if len(self._owners) >= MAX_OWNERS_CACHED:
                self._owners.clear()
            owner = self._owners[model] = shard(model, len(self.rings))
        return owner

    def append(self, record: CaptureRecord, owner: int) -> bool:
        """Copy the record into its owner's ring; True when that ring now holds a whole batch not yet handed out.
        A record that does not fit is dropped and counted."""
        ring = self.rings[owner]
        if not ring.append(record):
            self.dropped[record.model] = self.dropped.get(record.model, 0) + 1
            return False
        return ring.unpublished >= self.batch_records

    def __len__(self) -> int:
        return sum(ring.records for ring in self.rings)

    @property
    def bytes_waiting(self) -> int:
        return sum(ring.bytes_waiting for ring in self.rings)

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
