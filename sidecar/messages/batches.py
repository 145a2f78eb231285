"""How the main process tells a worker what to analyse: a range of its shared capture ring, in a few bytes.

The records themselves are already in the ring (`sidecar.capture.shared_ring`), written there on the request path;
a batch message names where they are. One multiprocessing `Connection` message per batch, so the worker reads it
with `Connection.recv_bytes`; an empty message (`STOP`) asks the worker to stop, and `RESET_PREFIX` followed by a
model name asks it to forget that model's reference; `LABELS_PREFIX` followed by JSON tells it which of a model's
predictions were right (joined feedback, for the quality estimate's calibration).
"""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

STOP = b""
RESET_PREFIX = b"reset:"  # never the length of a batch message
LABELS_PREFIX = b"labels:"
_BATCH = struct.Struct("!QQQQI")
Label = tuple[str, int, bool]  # (prediction id, instance, the prediction was right)


def encode_reset(model: str) -> bytes:
    message = RESET_PREFIX + model.encode("utf-8")
    return message + b"\0" if len(message) == _BATCH.size else message


def reset_model(message: bytes) -> str | None:
    """The model a reset message names, or None for any other message."""
    if len(message) != _BATCH.size and message.startswith(RESET_PREFIX):
        return message[len(RESET_PREFIX):].rstrip(b"\0").decode("utf-8", "replace")
    return None


def encode_labels(model: str, labels: list[Label]) -> bytes:
    message = LABELS_PREFIX + json.dumps([model, labels], separators=(",", ":")).encode("utf-8")
    return message + b" " if len(message) == _BATCH.size else message


def labels_of(message: bytes) -> tuple[str, list[Label]] | None:
    """(model, labels) of a labels message, or None for any other message."""
    if len(message) == _BATCH.size or not message.startswith(LABELS_PREFIX):
        return None
    model, labels = json.loads(message[len(LABELS_PREFIX):])
    return str(model), [(str(pid), int(instance), bool(correct)) for pid, instance, correct in labels]


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
