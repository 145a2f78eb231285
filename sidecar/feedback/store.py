"""The prediction store: what every analysed prediction instance predicted, kept for late ground truth.

Two backends share this interface: SQLite in the state directory (default, one replica) and Redis (many
replicas; feedback posted to any of them joins). Neither is ever touched from the event loop thread: writes go
to a dedicated writer thread through a queue, reads run on a reader thread (see `threads.py`).

A stored predicted value is already reduced (see `tasks.py`): a class label (`str`) or a number (`float`: a
binary probability, a regression value, or a scalar whose task is still undecided).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

Predicted = str | float
Key = tuple[str, int]


class PredictionRow(NamedTuple):
    """One analysed instance, as stored. The stores take any tuple of these fields in this order (`Row`)."""

    prediction_id: str
    instance: int
    model: str
    task: str
    predicted: Predicted
    time: float


Row = tuple[str, int, str, str, Predicted, float]
"""A `PredictionRow`'s fields as a plain tuple: what the feedback service hands the stores. CPython's garbage
collector stops tracking a plain tuple of strings and numbers, never a NamedTuple, and `zip` builds them in C."""


class StoredPrediction(NamedTuple):
    """Everything stored under one prediction id: its model, task, time and the predicted value per instance."""

    model: str
    task: str
    time: float
    instances: dict[int, Predicted]


WrittenCallback = Callable[[Sequence[Row], bool], None]  # (rows, stored ok), called on the loop


class StoreError(RuntimeError):
    """The store cannot be reached or used; the message says which store and why."""


class PredictionStore(Protocol):
    """What the feedback service needs from a store. `put` never blocks; the rest run off the event loop."""

    shared: bool  # True when other replicas write to the same store (pending feedback must poll it)

    async def start(self, on_written: WrittenCallback | None = None) -> None:
        """Connect; `on_written(rows, ok)` is then called on the event loop after each batch of `put` rows."""

    async def stop(self) -> None:
        """Write what is queued, then close."""

    def put(self, rows: Sequence[Row]) -> None:
        """Queue rows for the writer thread (never blocks)."""

    async def flush(self) -> None:
        """Wait until everything queued before this call is written."""

    async def lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        """The stored predictions among these ids (missing ids are absent from the answer)."""

    async def claim(self, keys: Sequence[Key]) -> list[bool]:
        """Mark (id, instance) pairs as having received feedback: True where this call was the first."""


def open_store(store: str, state_dir: Path, retention: float, max_rows: int, key_prefix: str) -> PredictionStore:
    """The store named by the `store` setting: `sqlite` or a Redis URL."""
    if store == "sqlite":
        from sidecar.feedback.sqlite_store import SqliteStore

        return SqliteStore(state_dir / "predictions.sqlite3", retention, max_rows)
    from sidecar.feedback.redis_store import RedisStore

    return RedisStore(store, retention, key_prefix)
