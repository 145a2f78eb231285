"""The prediction store: what every analysed prediction instance predicted, kept for late ground truth.

Two backends share this interface: SQLite in the state directory (default, one replica) and Redis (many
replicas; feedback posted to any of them joins). Neither is ever touched from the event loop thread: writes go
to a dedicated writer thread through a queue, reads run on a reader thread (see `threads.py`).

Who writes the predictions: the analysis worker that reduced them, through the store's `row_writer` (its own
connection), before it sends them to the main process marked `written`; the main process's writer thread only
writes what a worker could not (`write` failed) and what reaches the service otherwise. Why: in the main process
the writer thread shares the event loop's GIL, and `executemany` releases and takes it again for every row; at 16
connections a sampling profile of `sidecar run` (perf) put 7% of the main process's CPU in the inserts and another
9% in handing the GIL back and forth (futex waits, `pthread_cond_signal` wake-ups).

Write-behind window (docs/durability.md): a put row is written at most `flush_interval` seconds after its put, or
as soon as `flush_rows` rows are queued, whichever comes first, provided the writer keeps up; `stop` writes
everything queued, within its deadline, and says what it wrote.

A stored predicted value is already reduced (see `tasks.py`): a class label (`str`) or a number (`float`: a
binary probability, a regression value, or a scalar whose task is still undecided). Beside it, each row keeps what
the analysis found about the instance (`PredictionDetails`): the request's version, the outlier detectors that
scored it (`OUTLIER_CODES`, upper case when flagged) with their scores, and its data-quality issues (`ISSUE_CODES`).
Rows stored before these columns existed read them as None ("not recorded"); so do truths claimed before the
truth was kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, repeat
from typing import NamedTuple, Protocol

from sidecar.messages.results import OUTLIER_CODES, PredictionDetails, PredictionWriter, StoredPredictions

Predicted = str | float
Key = tuple[str, int]
SCORED_DETECTORS = tuple(OUTLIER_CODES)  # each has a score column, in this order, at the end of a `Row`

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
    version: str | None = None  # None (in all four): not recorded
    outliers: str | None = None
    issues: str | None = None
    mahalanobis: float | None = None  # one score per detector of SCORED_DETECTORS
    autoencoder: float | None = None


Row = tuple[str, int, str, str, Predicted, float, str | None, str | None, str | None, float | None, float | None]
"""A `PredictionRow`'s fields as a plain tuple: what a store writes. CPython's garbage collector stops tracking a
plain tuple of strings and numbers, never a NamedTuple, and `zip` builds them in C."""


class Rows(Protocol):
    """What `put` takes: rows that know their count (a list of `Row`s, or `PredictionColumns`)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Row]: ...


class StoredPrediction(NamedTuple):
    """What a feedback join needs of one prediction id: its model, task, time and the predicted value per instance."""

    model: str
    task: str
    time: float
    instances: dict[int, Predicted]


class StoredInstance(NamedTuple):
    """One instance as stored, with what the analysis found about it (None: not recorded)."""

    task: str
    predicted: Predicted
    outliers: str | None  # OUTLIER_CODES letters of the detectors that scored it, upper case when flagged
    issues: str | None  # ISSUE_CODES letters
    scores: dict[str, float]  # detector -> score, for the detectors that scored it


class PredictionRecord(NamedTuple):
    """Everything stored under one prediction id: model (the analysis name), version, time, the instances, and
    the truths joined so far (instance -> the truth as compared, None when it was claimed before truths were kept).
    """

    model: str
    version: str | None
    time: float
    instances: dict[int, StoredInstance]
    truths: dict[int, Predicted | None]


def stored_instance(row: Row) -> StoredInstance:
    """A row's instance: scores only for the detectors its `outliers` code says scored it."""
    outliers = row[7]
    scores: dict[str, float] = {}
    if outliers:
        for detector, score in zip(SCORED_DETECTORS, row[9:], strict=True):
            if OUTLIER_CODES[detector] in outliers.lower():
                scores[detector] = float("nan") if score is None else float(score)
    return StoredInstance(row[3], row[4], outliers, row[8], scores)


class PredictionColumns:
    """One model's analysed instances on their way to the store, a list per field: `Rows` whose row tuples exist
    only while a store's writer thread iterates them.

    Why not rows: a tuple per instance lived from its arrival on the event loop to its commit, up to a second, so
    every ~700 of them set off a young-generation collection in the main process that walked all rows still queued:
    23 collections of about 0.5 ms each in 8 s of the saturated analysis benchmark, against 10 without the store.
    """

    __slots__ = ("details", "ids", "instances", "model", "tasks", "time", "values")

    def __init__(self, model: str, ids: list[str], instances: list[int], tasks: list[str], values: list[Predicted],
                 time: float, details: PredictionDetails | None = None) -> None:
        if not len(ids) == len(instances) == len(tasks) == len(values):
            raise ValueError("prediction columns must have the same length")
        if details is not None and not (
                len(ids) == len(details.versions) == len(details.outliers) == len(details.issues)
                and all(len(column) == len(ids) for column in details.scores.values())):
            raise ValueError("prediction details must have as many rows as the predictions")
        self.model = model
        self.ids = ids
        self.instances = instances
        self.tasks = tasks
        self.values = values
        self.time = time
        self.details = details

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Row]:
        details = self.details
        if details is None:
            return zip(self.ids, self.instances, repeat(self.model), self.tasks, self.values, repeat(self.time),
                       repeat(None), repeat(None), repeat(None), *(repeat(None) for _ in SCORED_DETECTORS))
        scores = [details.scores.get(detector) for detector in SCORED_DETECTORS]
        return zip(self.ids, self.instances, repeat(self.model), self.tasks, self.values, repeat(self.time),
                   details.versions, details.outliers, details.issues,
                   *(repeat(None) if column is None else column for column in scores))

    def describe(self, prediction_id: str) -> PredictionRecord | None:
        """Everything these columns store under `prediction_id` (no truths: those are in the store), or None."""
        found = [row for row in self if row[0] == prediction_id]
        if not found:
            return None
        return PredictionRecord(self.model, found[0][6], self.time, {row[1]: stored_instance(row) for row in found},
                                {})

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

    async def describe(self, prediction_id: str) -> PredictionRecord | None:
        """Everything stored under one id, truths included; None when the id has no stored instance."""

    def row_writer(self) -> PredictionWriter:
        """A writer of this store that another process (an analysis worker) can take and use on its own."""

    def written_elsewhere(self, rows: int) -> None:
        """`rows` rows were written by a `row_writer` (counted toward the store's bounds)."""

    async def claim(self, keys: Sequence[Key], truths: Sequence[Predicted] | None = None) -> list[bool]:
        """Mark (id, instance) pairs as having received feedback: True where this call was the first, which also
        keeps its truth (`truths`, one per key, as compared: a class label or a number)."""


def rows_of(predictions: Iterable[StoredPredictions], now: float) -> Iterator[Row]:
    """The store's rows of reduced predictions, stored at `now`."""
    return chain.from_iterable(PredictionColumns(stored.model, stored.ids, stored.instances, stored.tasks,
                                                 stored.values, now, stored.details) for stored in predictions)
