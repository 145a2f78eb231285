"""How the main process tells a worker what to analyse: a range of its shared capture ring, in a few bytes.

The records themselves are already in the ring (`sidecar.capture.shared_ring`), written there on the request path;
a batch message names where they are. One multiprocessing `Connection` message per batch, so the worker reads it
with `Connection.recv_bytes`; an empty message (`STOP`) asks the worker to stop, and `RESET_PREFIX` followed by a
model name asks it to forget that model's reference.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

STOP = b""
RESET_PREFIX = b"reset:"  # never the length of a batch message
_BATCH = struct.Struct("!QQQQI")


def encode_reset(model: str) -> bytes:
    message = RESET_PREFIX + model.encode("utf-8")
    return message + b"\0" if len(message) == _BATCH.size else message


def reset_model(message: bytes) -> str | None:
    """The model a reset message names, or None for any other message."""
    if len(message) != _BATCH.size and message.startswith(RESET_PREFIX):
        return message[len(RESET_PREFIX):].rstrip(b"\0").decode("utf-8", "replace")
    return None


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
