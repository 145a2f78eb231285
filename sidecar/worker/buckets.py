"""History buckets of one model, in the worker that owns it: per bucket, statistics of the inputs, the outputs,
and the drift and outlier results, sent to the main process as one `HistoryBucket` when the bucket closes.

A bucket is either a span of capture time (`history_bucket_seconds`, aligned to multiples of it since the epoch)
or a count of instances (`history_bucket_instances`, which wins when set). As with time windows, one time bucket is
open at a time: a row of a later bucket closes it, and so does the clock `BUCKET_GRACE_SECONDS` after its end (for
records still on their way); a late row (of a bucket already closed) joins the open bucket, or the next. A count
bucket closes as its last instance arrives; its `start` and `end` are the capture times of its first and last
instance.

Outlier counts go with their rows. A drift verdict belongs to the first bucket to close whose end is not before the
end of the verdict's window (a verdict that comes after its bucket closed joins the next one). A partial bucket is
not sent when the worker stops (its rows are lost with the worker, as are windows in progress).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from sidecar.detectors.summaries import LevelCounts, NumericSummary
from sidecar.messages.results import CLASSIFICATION, REGRESSION, HistoryBucket
from sidecar.worker.features import predicted_classes

BUCKET_GRACE_SECONDS = 2.0  # records of a time bucket may still be in the ring or a queue this long after its end
MAX_WAITING_VERDICTS = 10_000


def _unnamed(position: int) -> list[str] | None:
    return None


class BucketColumns(NamedTuple):
    """Which input columns a bucket summarises: names, whether each is categorical, where each lies in the rows
    `Buckets.add` gets, and the names of a coded column's levels (`level_names(position)`: its strings in code
    order, or None). Levels are named when the bucket closes, so a value first seen during the bucket is named too.
    """

    names: list[str]
    categorical: list[bool]
    positions: list[int]
    level_names: Callable[[int], Sequence[str] | None] = _unnamed

    @classmethod
    def first(cls, names: list[str], categorical: list[bool] | None = None) -> BucketColumns:
        """The first `len(names)` columns of the rows, none of them coded."""
        return cls(list(names), categorical or [False] * len(names), list(range(len(names))))


class BucketOutputs(NamedTuple):
    """A block's analysed outputs: (rows, width) values (NaN rows where an exchange had none) and how to read them."""

    task: str  # classification or regression
    values: np.ndarray
    class_ids: bool
    labels: list[str] | None


class OutlierRows(NamedTuple):
    """One outlier detector's verdict on a block, row-aligned: scored rows, outlier rows and the scores."""

    scored: np.ndarray  # bool
    outliers: np.ndarray  # bool
    scores: np.ndarray | None = None  # float, NaN where not scored


class _Outputs:
    """The outputs of one bucket: predicted class counts and probability sums, or the regression values."""

    def __init__(self, task: str, max_levels: int, capacity: int) -> None:
        self.task = task
        self.max_levels = max_levels
        self.classes: dict[str, int] = {}
        self.probability_sums: np.ndarray | None = None
        self.probability_rows = 0
        self.labels: list[str] | None = None
        self.values = NumericSummary(1, capacity)

    def add(self, outputs: BucketOutputs) -> None:
        values = outputs.values
        rows = values[np.any(np.isfinite(values), axis=1)] if values.size else values
        if rows.shape[0] == 0:
            return
        if self.task == REGRESSION:
            self.values.add(rows[:, :1])
            return
        labels = outputs.labels
        for index, count in zip(*np.unique(predicted_classes(rows, outputs.class_ids), return_counts=True),
                                strict=True):
            key = _class_key(int(index), labels)
            self.classes[key] = self.classes.get(key, 0) + int(count)
        if outputs.class_ids:
            return
        probabilities = np.concatenate([1.0 - rows, rows], axis=1) if rows.shape[1] == 1 else rows
        sums = np.nansum(probabilities, axis=0)
        if self.probability_sums is None or self.probability_sums.shape != sums.shape:
            self.probability_sums, self.probability_rows, self.labels = np.zeros_like(sums), 0, labels
        self.probability_sums += sums
        self.probability_rows += rows.shape[0]

    def render(self) -> dict[str, Any]:
        if self.task == REGRESSION:
            entry = self.values.summary(0)
            valid = entry["count"] - entry["missing"]
            return {"task": REGRESSION, "count": valid,
                    **{key: entry[key] for key in ("mean", "std", "p5", "p50", "p95")}}
        means: dict[str, float] = {}
        if self.probability_sums is not None and self.probability_rows:
            means = {_class_key(index, self.labels): value / self.probability_rows
                     for index, value in enumerate(self.probability_sums.tolist())}
        keys = sorted(set(self.classes) | set(means), key=lambda key: (-self.classes.get(key, 0), _sortable(key)))
        classes: dict[str, dict[str, Any]] = {}
        for key in keys[:self.max_levels]:
            classes[key] = {"count": self.classes.get(key, 0), "mean_probability": means.get(key)}
        rest = sum(self.classes.get(key, 0) for key in keys[self.max_levels:])
        if rest:
            classes[LevelCounts.OTHER] = {"count": rest, "mean_probability": None}
        return {"task": CLASSIFICATION, "classes": classes}


def _class_key(index: int, labels: list[str] | None) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else str(index)


def _sortable(key: str) -> tuple[int, float, str]:
    try:
        return 0, float(key), key
    except ValueError:
        return 1, 0.0, key


class _Open:
    """The bucket being filled."""

    def __init__(self, columns: BucketColumns | None, max_levels: int, capacity: int) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.index: int | None = None  # time buckets: start // seconds
        self.instances = 0
        self.requests = 0
        self.columns = columns
        self.max_levels = max_levels
        self.capacity = capacity
        self.numeric_columns: np.ndarray | None = None  # positions in the rows of the numeric columns
        self.numeric: NumericSummary | None = None
        self.levels: dict[int, LevelCounts] = {}  # position in the rows -> its level counts
        if columns is not None:
            self.numeric_columns = np.array([position for position, categorical
                                             in zip(columns.positions, columns.categorical, strict=True)
                                             if not categorical], dtype=np.int64)
            self.numeric = NumericSummary(int(self.numeric_columns.size), capacity)
            self.levels = {position: LevelCounts(max_levels) for position, categorical
                           in zip(columns.positions, columns.categorical, strict=True) if categorical}
        self.outputs: _Outputs | None = None
        self.drift: dict[str, dict[str, Any]] = {}
        self.outliers: dict[str, dict[str, int]] = {}

    @property
    def empty(self) -> bool:
        return self.instances == 0

    def add(self, inputs: np.ndarray, times: np.ndarray, starts: np.ndarray, outputs: BucketOutputs | None,
            outliers: dict[str, OutlierRows]) -> None:
        if inputs.shape[0] == 0:
            return
        low, high = float(times.min()), float(times.max())
        self.start = low if self.start is None else min(self.start, low)
        self.end = high if self.end is None else max(self.end, high)
        self.instances += int(inputs.shape[0])
        self.requests += int(np.count_nonzero(starts))
        if self.numeric is not None and self.numeric_columns is not None:
            self.numeric.add(inputs[:, self.numeric_columns])
            for column, counts in self.levels.items():
                counts.add(inputs[:, column])
        if outputs is not None:
            if self.outputs is None:
                self.outputs = _Outputs(outputs.task, self.max_levels, self.capacity)
            if self.outputs.task == outputs.task:
                self.outputs.add(outputs)
        for name, verdict in outliers.items():
            entry = self.outliers.setdefault(name, {"instances": 0, "outliers": 0})
            entry["instances"] += int(np.count_nonzero(verdict.scored))
            entry["outliers"] += int(np.count_nonzero(verdict.outliers))

    def add_drift(self, detector: str, drifted: bool, p_value: float) -> None:
        entry = self.drift.setdefault(detector, {"windows": 0, "drifted": 0, "min_p_value": None})
        entry["windows"] += 1
        entry["drifted"] += int(drifted)
        if math.isfinite(p_value) and (entry["min_p_value"] is None or p_value < entry["min_p_value"]):
            entry["min_p_value"] = p_value

    def inputs(self) -> dict[str, dict[str, Any]]:
        columns = self.columns
        if columns is None or self.numeric is None:
            return {}
        rendered: dict[str, dict[str, Any]] = {}
        numeric = 0
        for name, position, categorical in zip(columns.names, columns.positions, columns.categorical, strict=True):
            if categorical:
                rendered[name] = self.levels[position].summary(columns.level_names(position))
            else:
                rendered[name] = self.numeric.summary(numeric)
                numeric += 1
        return rendered


class Buckets:
    """The history buckets of one model: rows in (`add`), closed buckets out as `HistoryBucket` messages."""

    def __init__(self, model: str, bucket: dict[str, Any], max_levels: int, sample_rows: int) -> None:
        self.model = model
        self.bucket = dict(bucket)
        self.seconds = float(bucket["seconds"]) if bucket["kind"] == "time" else 0.0
        self.size = int(bucket["instances"]) if bucket["kind"] == "count" else 0
        self.max_levels = max_levels
        self.sample_rows = sample_rows
        self.closed = 0
        self._last_closed: int | None = None  # time buckets: the index of the latest bucket closed
        self._open = _Open(None, max_levels, sample_rows)
        self._verdicts: list[tuple[str, float, bool, float]] = []  # drift verdicts waiting for their bucket to close

    def describe(self) -> dict[str, Any]:
        return {**self.bucket, "closed": self.closed, "open_instances": self._open.instances}

    def add(self, inputs: np.ndarray, times: np.ndarray, starts: np.ndarray, columns: BucketColumns,
            outputs: BucketOutputs | None = None,
            outliers: dict[str, OutlierRows] | None = None) -> list[HistoryBucket]:
        """Fold in a block of rows (inputs, capture times, whether each row is its request's first, outputs and
        outlier verdicts, all row-aligned); returns the buckets it closed. A bucket summarises the `columns` it
        began with (the analysis's decisions may change while it is open)."""
        outliers = outliers or {}
        if self.size:
            return self._add_counted(inputs, times, starts, columns, outputs, outliers)
        closed: list[HistoryBucket] = []
        indexes = np.floor(times / self.seconds).astype(np.int64)
        floor = self._open.index if self._open.index is not None else (
            None if self._last_closed is None else self._last_closed + 1)
        if floor is not None:
            indexes = np.maximum(indexes, floor)  # late rows join the open (or the next) bucket
        for index in np.unique(indexes).tolist():
            if self._open.index is not None and index != self._open.index:
                closed.extend(self._close())
            if self._open.index is None:
                self._begin(columns, int(index))
            rows = indexes == index
            self._open.add(inputs[rows], times[rows], starts[rows], _rows(outputs, rows),
                           {name: OutlierRows(v.scored[rows], v.outliers[rows]) for name, v in outliers.items()})
        return closed

    def _add_counted(self, inputs: np.ndarray, times: np.ndarray, starts: np.ndarray, columns: BucketColumns,
                     outputs: BucketOutputs | None, outliers: dict[str, OutlierRows]) -> list[HistoryBucket]:
        closed: list[HistoryBucket] = []
        position = 0
        while position < inputs.shape[0]:
            if self._open.columns is None:
                self._begin(columns, None)
            take = min(self.size - self._open.instances, inputs.shape[0] - position)
            rows = slice(position, position + take)
            self._open.add(inputs[rows], times[rows], starts[rows], _rows(outputs, rows),
                           {name: OutlierRows(v.scored[rows], v.outliers[rows]) for name, v in outliers.items()})
            position += take
            if self._open.instances >= self.size:
                closed.extend(self._close())
        return closed

    def add_drift(self, detector: str, window_end: float, drifted: bool, p_value: float) -> None:
        """A drift verdict on a window that ended at capture time `window_end`."""
        if len(self._verdicts) < MAX_WAITING_VERDICTS:
            self._verdicts.append((detector, window_end, drifted, p_value))

    def poll(self, now: float) -> list[HistoryBucket]:
        """Close the open time bucket once its end (plus the grace) has passed."""
        index = self._open.index
        if not self.seconds or index is None or now < (index + 1) * self.seconds + BUCKET_GRACE_SECONDS:
            return []
        return self._close()

    def _begin(self, columns: BucketColumns, index: int | None) -> None:
        self._open = _Open(columns, self.max_levels, self.sample_rows)
        self._open.index = index

    def _close(self) -> list[HistoryBucket]:
        bucket = self._open
        self._open = _Open(None, self.max_levels, self.sample_rows)
        if bucket.empty or bucket.start is None or bucket.end is None:
            return []
        self.closed += 1
        start, end = bucket.start, bucket.end
        if bucket.index is not None:
            self._last_closed = bucket.index
            start, end = bucket.index * self.seconds, (bucket.index + 1) * self.seconds
        waiting = []
        for verdict in self._verdicts:
            if verdict[1] < end or (not self.seconds and verdict[1] <= end):
                bucket.add_drift(verdict[0], verdict[2], verdict[3])
            else:
                waiting.append(verdict)
        self._verdicts = waiting
        sampled = bucket.numeric is not None and bucket.numeric.sampled
        return [HistoryBucket(self.model, dict(self.bucket), start, end, bucket.instances, bucket.requests,
                              bucket.inputs(), None if bucket.outputs is None else bucket.outputs.render(),
                              bucket.drift, bucket.outliers, sampled)]


def _rows(outputs: BucketOutputs | None, rows: Any) -> BucketOutputs | None:
    return None if outputs is None else outputs._replace(values=outputs.values[rows])
