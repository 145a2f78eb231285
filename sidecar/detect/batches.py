"""How the main process tells a worker what to analyse: a range of its shared capture ring, in a few bytes.

The records themselves are already in the ring (`sidecar.capture.shared_ring`), written there on the request path;
a batch message names where they are. One multiprocessing `Connection` message per batch, so the worker reads it
with `Connection.recv_bytes`; an empty message (`STOP`) asks the worker to stop.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

STOP = b""
_BATCH = struct.Struct("!QQQQI")


class Batch(NamedTuple):
    """Main -> worker: the records between `start` and `end` of the worker's ring (byte positions), `records` of
    them; `generation` is the worker's, so answers from an earlier one are told apart."""

    generation: int
    batch_id: int
    start: int
    end: int
    records: int


def encode(batch: Batch) -> bytes:
    return _BATCH.pack(*batch)


def decode(message: bytes) -> Batch:
    return Batch(*_BATCH.unpack(message))
