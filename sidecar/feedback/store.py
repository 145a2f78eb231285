"""The prediction store: what every analysed prediction instance predicted, kept for late ground truth.

Two backends share this interface: SQLite in the state directory (default, one replica) and Redis (many
replicas; feedback posted to any of them joins). Neither is ever touched from the event loop thread: writes go
to a dedicated writer thread through a queue, reads run on a reader thread (see `threads.py`).

Write-behind window (docs/durability.md): a put row is written at most `flush_interval` seconds after its put, or
as soon as `flush_rows` rows are queued, whichever comes first, provided the writer keeps up; `stop` writes
everything queued, within its deadline, and says what it wrote.

A stored predicted value is already reduced (see `tasks.py`): a class label (`str`) or a number (`float`: a
binary probability, a regression value, or a scalar whose task is still undecided).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from typing import NamedTuple, Protocol

Predicted = str | float
Key = tuple[str, int]

DEFAULT_FLUSH_INTERVAL = 0.1  # seconds a queued row may wait for its write (the store_flush_interval setting)
DEFAULT_FLUSH_ROWS = 1000  # queued rows that start a write at once (the store_flush_rows setting)
DEFAULT_STOP_TIMEOUT = 10.0  # seconds `stop` waits for the writer (the store_stop_timeout setting)


class PredictionRow(NamedTuple):
    """One analysed instance, as stored. The stores take any tuple of these fields in this order (`Row`)."""

    prediction_id: str
    instance: int
    model: str
    task: str
    predicted: Predicted
    time: float


Row = tuple[str, int, str, str, Predicted, float]
"""A `PredictionRow`'s fields as a plain tuple: what a store writes. CPython's garbage collector stops tracking a
plain tuple of strings and numbers, never a NamedTuple, and `zip` builds them in C."""


class Rows(Protocol):
    """What `put` takes: rows that know their count (a list of `Row`s, or `PredictionColumns`)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Row]: ...


class StoredPrediction(NamedTuple):
    """Everything stored under one prediction id: its model, task, time and the predicted value per instance."""

    model: str
    task: str
    time: float
    instances: dict[int, Predicted]


class PredictionColumns:
    """One model's analysed instances on their way to the store, a list per field: `Rows` whose row tuples exist
    only while a store's writer thread iterates them.

    Why not rows: a tuple per instance lived from its arrival on the event loop to its commit, up to a second, so
    every ~700 of them set off a young-generation collection in the main process that walked all rows still queued:
    23 collections of about 0.5 ms each in 8 s of the saturated analysis benchmark, against 10 without the store.
    """

    __slots__ = ("ids", "instances", "model", "tasks", "time", "values")

    def __init__(self, model: str, ids: list[str], instances: list[int], tasks: list[str], values: list[Predicted],
                 time: float) -> None:
        if not len(ids) == len(instances) == len(tasks) == len(values):
            raise ValueError("prediction columns must have the same length")
        self.model = model
        self.ids = ids
        self.instances = instances
        self.tasks = tasks
        self.values = values
        self.time = time

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Row]:
        return zip(self.ids, self.instances, repeat(self.model), self.tasks, self.values, repeat(self.time))

    def record(self, prediction_id: str) -> StoredPrediction | None:
        """What these columns store under `prediction_id` (the task of its first instance), or None."""
        ids = self.ids
        try:
            position = ids.index(prediction_id)
        except ValueError:
            return None
        stored = StoredPrediction(self.model, self.tasks[position], self.time, {})
        while True:
            stored.instances[self.instances[position]] = self.values[position]
            try:
                position = ids.index(prediction_id, position + 1)
            except ValueError:
                return stored


WrittenCallback = Callable[[int, bool], None]  # (rows written, stored ok), called on the loop


class Drained(NamedTuple):
    """What a store's `stop` did with the rows still queued for its writer."""

    queued: int  # rows queued, not yet written, when the stop began
    written: int  # rows written during the stop (including any put while it ran)
    failed: int  # rows whose write failed during the stop (the store said why in a warning)
    left: int  # rows still not written when the deadline passed: lost once the process exits
    seconds: float  # how long the stop took

    @property
    def complete(self) -> bool:
        return not self.failed and not self.left


class StoreError(RuntimeError):
    """The store cannot be reached or used; the message says which store and why."""


class PredictionStore(Protocol):
    """What the feedback service needs from a store. `put` never blocks; the rest run off the event loop."""

    shared: bool  # True when other replicas write to the same store (pending feedback must poll it)

    async def start(self, on_written: WrittenCallback | None = None) -> None:
        """Connect; `on_written(rows, ok)` is then called on the event loop after each batch of `put` rows."""

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> Drained:
        """Write what is queued (for at most `timeout` seconds), then close; says what became of the queued rows."""

    def put(self, rows: Rows) -> None:
        """Queue rows for the writer thread (never blocks); the store keeps `rows` until written: do not change it."""

    async def flush(self) -> None:
        """Wait until everything queued before this call is written."""

    async def lookup(self, prediction_ids: Sequence[str]) -> dict[str, StoredPrediction]:
        """The stored predictions among these ids (missing ids are absent from the answer)."""

    async def claim(self, keys: Sequence[Key]) -> list[bool]:
        """Mark (id, instance) pairs as having received feedback: True where this call was the first."""
