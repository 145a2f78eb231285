"""Messages between the main process and the analysis workers: small, picklable, numpy-free.

Workers send a list of results per processed batch (and per time tick); the main process applies them to the
metrics, the monitor snapshots and the prediction hook. Every field is a plain Python value (str, int, float,
bool, lists, dicts), so the main process never needs numpy to read them.
"""

from __future__ import annotations

import pickle
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from math import isfinite
from typing import Any, NamedTuple, Protocol

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SCORE_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 25.0, 50.0, 100.0, 1000.0)
CLASSIFICATION = "classification"
REGRESSION = "regression"


class Counted(NamedTuple):
    """Observations for a histogram, counted where they were made (a worker): how many fell in each bucket (the
    histogram's upper bounds in order, then +Inf) and their sum. The main process adds them in one step, where
    observing each value had cost about 1.5 us of its GIL per value."""

    counts: tuple[int, ...]
    total: float


def bucket_counts(values: Iterable[float], bounds: Sequence[float]) -> Counted:
    """The finite `values` counted into the buckets `bounds` (+Inf after them), as Prometheus buckets count: a value
    goes to the first bound it does not exceed. NaN and infinities are left out (the sum would stay infinite)."""
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for value in values:
        if isfinite(value):
            counts[bisect_left(bounds, value)] += 1
            total += value
    return Counted(tuple(counts), total)


def add_counted(first: Counted, second: Counted) -> Counted:
    return Counted(tuple(a + b for a, b in zip(first.counts, second.counts, strict=True)), first.total + second.total)


class WorkerStarted(NamedTuple):
    worker: int
    generation: int
    pid: int


class WorkerStopped(NamedTuple):
    worker: int
    generation: int


class BatchDone(NamedTuple):
    """Sent last for a batch: frees its slot in the pool. `lags`: capture-to-result seconds of the batch's
    answered records, counted into `LAG_BUCKETS`."""

    worker: int
    generation: int
    batch_id: int
    records: int
    lags: Counted
    decode_errors: dict[tuple[str, str, str], int]  # (model, protocol, reason) -> records
    analysed: dict[str, int]  # model -> instances analysed


class ReferenceStatus(NamedTuple):
    source: str  # "traffic" or "file"
    file: str | None
    instances: int
    target: int
    complete: bool
    saved: str | None
    restored: bool
    error: str | None


class ModelStatus(NamedTuple):
    """The slowly changing facts about a model: task, reference progress, window settings, features."""

    model: str
    worker: int
    task: str | None
    reference: ReferenceStatus
    windows: dict[str, Any]
    inputs: list[str]  # the first input feature names (a status stays small)
    outputs: list[str]
    input_columns: int  # input feature columns in all
    decisions: dict[str, Any] | None = None  # what the analysis decided and why, once the reference is complete


class FeatureStat(NamedTuple):
    name: str
    kind: str  # "numeric" or "categorical"
    statistic: float
    p_value: float
    adjusted_p_value: float
    effect_size: float
    drift: bool
    reference: dict[str, Any]
    current: dict[str, Any]


def worst_features(features: list[FeatureStat], count: int) -> list[FeatureStat]:
    """The `count` features most indicative of drift: lowest adjusted p-value, then largest effect size."""
    def key(item: FeatureStat) -> tuple[float, float]:
        p_value = item.adjusted_p_value if item.adjusted_p_value == item.adjusted_p_value else 1.0
        effect = item.effect_size if item.effect_size == item.effect_size else 0.0
        return p_value, -abs(effect)

    return sorted(features, key=key)[:count]


class PackedFeatures:
    """A window's per-feature statistics on their way to the main process: the worst few as they are (the metrics
    export those) and all of them pickled once more in the worker, unpickled only when the drill-down asks.

    Why: unpickling a 120-feature window built about 1,000 objects (a named tuple and two summary dicts per feature)
    on the event loop, about 230 us, and the metrics then ranked them all, for features nobody looks at until
    `GET /v1/monitor/{model}`.
    """

    __slots__ = ("blob", "count", "worst")

    def __init__(self, blob: bytes, count: int, worst: list[FeatureStat]) -> None:
        self.blob = blob
        self.count = count
        self.worst = worst

    @classmethod
    def of(cls, features: list[FeatureStat], keep: int) -> PackedFeatures:
        """`features` packed, with the `keep` worst (`worst_features`) kept aside."""
        return cls(pickle.dumps(features, pickle.HIGHEST_PROTOCOL), len(features), worst_features(features, keep))

    def all(self) -> list[FeatureStat]:
        features: list[FeatureStat] = pickle.loads(self.blob)
        return features

    def __len__(self) -> int:
        return self.count

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackedFeatures) and (self.blob, self.worst) == (other.blob, other.worst)

    def __hash__(self) -> int:
        return hash(self.blob)

    def __getstate__(self) -> tuple[bytes, int, list[FeatureStat]]:
        return self.blob, self.count, self.worst

    def __setstate__(self, state: tuple[bytes, int, list[FeatureStat]]) -> None:
        self.blob, self.count, self.worst = state


class DriftWindow(NamedTuple):
    """One detector's verdict on its latest window. `features` holds none for multivariate detectors (MMD).

    A worker merges the windows it evaluated between two sends (`sidecar.worker.coalesce`): the fields describe the
    latest, `evaluated` counts them all and `drifted` (None: just this one's `drift`) those that drifted.
    """

    model: str
    detector: str
    window: dict[str, Any]  # index, instances, start, end (capture times)
    drift: bool
    p_value: float
    threshold: float
    distance: float | None
    features: PackedFeatures
    duration: float
    evaluated: int = 1
    drifted: int | None = None

    def counts(self) -> tuple[int, int]:
        """(windows evaluated, windows drifted) that this result stands for."""
        return self.evaluated, int(self.drift) if self.drifted is None else self.drifted


class OutlierBatch(NamedTuple):
    """One batch's outlier counts: its instances' scores counted into `SCORE_BUCKETS`, and the largest score."""

    model: str
    detector: str
    instances: int
    outliers: int
    threshold: float
    scores: Counted
    max_score: float | None
    duration: float


class QualityBatch(NamedTuple):
    """Data-quality issue counts of one batch: (feature, issue) -> instances; issue names as in QUALITY_ISSUES."""

    model: str
    instances: int
    counts: dict[tuple[str, str], int]
    duration: float


QUALITY_ISSUES = ("missing", "nan", "inf", "below_range", "above_range", "shape", "dtype")
ISSUE_CODES = {"missing": "m", "nan": "n", "inf": "i", "below_range": "b", "above_range": "a", "shape": "s",
               "dtype": "d"}
"""One letter per data-quality issue: what the prediction store keeps per instance (`PredictionDetails.issues`)."""
OUTLIER_CODES = {"mahalanobis": "m", "autoencoder": "a"}
"""One letter per outlier detector: in `PredictionDetails.outliers` lower case when the detector scored the instance,
upper case when it also flagged it as an outlier."""


class PredictedInstance(NamedTuple):
    """One instance's prediction, for the feedback store.

    `predicted` is JSON-able, in the shapes `sidecar.feedback.tasks.reduce_prediction` reads:
    - classification from predict: the probability list (a single probability column p becomes `[1 - p, p]`);
    - classification from classify: the `[[label, score], ...]` pairs;
    - classification with more than 32 classes: only the winner, its class index (or label for classify);
    - regression: the value (a list of values for multi-output regressors).
    """

    prediction_id: str
    instance_index: int
    model: str
    predicted: Any


class PredictionDetails(NamedTuple):
    """What the analysis found about each predicted instance, one column per field, row-aligned with the
    predictions it travels with: the request's model version ("" when it named none), the outlier detectors that
    scored the instance (`OUTLIER_CODES`, upper case when flagged; None: not recorded), its data-quality issues
    (`ISSUE_CODES` letters; None: not recorded) and each detector's score (NaN where it did not score the instance).
    """

    versions: list[str]
    outliers: list[str | None]
    issues: list[str | None]
    scores: dict[str, list[float]]

    @classmethod
    def unrecorded(cls, count: int) -> PredictionDetails:
        return cls([""] * count, [None] * count, [None] * count, {})

    def cut(self, start: int, end: int) -> PredictionDetails:
        return PredictionDetails(self.versions[start:end], self.outliers[start:end], self.issues[start:end],
                                 {name: column[start:end] for name, column in self.scores.items()})

    def joined(self, other: PredictionDetails) -> PredictionDetails:
        """These rows, then `other`'s (a detector scored in only one of them is NaN in the other's rows)."""
        mine, theirs = len(self.versions), len(other.versions)
        nan = float("nan")
        scores = {name: self.scores.get(name, [nan] * mine) + other.scores.get(name, [nan] * theirs)
                  for name in {**self.scores, **other.scores}}
        return PredictionDetails(self.versions + other.versions, self.outliers + other.outliers,
                                 self.issues + other.issues, scores)


class Predictions(NamedTuple):
    """The predictions of one model in one batch; `task` is "binary", "multiclass" or "regression"; `details`
    (row-aligned with `items`) what the analysis found about each instance, None when nothing was recorded."""

    model: str
    task: str
    items: list[PredictedInstance]
    details: PredictionDetails | None = None


class PredictionReducer(Protocol):
    """How a worker turns its `Predictions` into what the feedback store keeps (the feedback side's rules, handed to
    the workers by the composition root, so the worker never imports the feedback package)."""

    def reduce(self, predictions: Predictions) -> StoredPredictions: ...


class PredictionWriter(Protocol):
    """Writes a worker's reduced predictions straight into the feedback store before they are sent (the store's
    own writer, handed to the workers by the composition root; picklable, it connects on first use). `write` raises
    when the store cannot take them; they are then sent unwritten and the main process stores them."""

    def write(self, predictions: Sequence[StoredPredictions]) -> None: ...

    def close(self) -> None: ...


class StoredPredictions(NamedTuple):
    """One model's predictions as the feedback store keeps them: reduced in the worker
    (`sidecar.feedback.tasks.PredictionRules`), one column per field.

    Columns of plain values unpickle in C, about ten times faster than a named tuple per instance, and the
    reduction (about 4 us of Python an instance) stays in the worker: both used to run on the main process's GIL.
    """

    model: str
    ids: list[str]
    instances: list[int]
    tasks: list[str]  # binary, multiclass, regression, or unusable (the prediction cannot meet a truth)
    values: list[Any]  # the stored value: a class label (str) or a number
    details: PredictionDetails | None = None  # row-aligned; None: not recorded
    written: bool = False  # already in the store (a worker's `PredictionWriter` wrote them)

    def cut(self, start: int, end: int) -> StoredPredictions:
        return StoredPredictions(self.model, self.ids[start:end], self.instances[start:end], self.tasks[start:end],
                                 self.values[start:end], None if self.details is None else self.details.cut(start, end),
                                 self.written)

    def joined(self, other: StoredPredictions) -> StoredPredictions:
        """These rows, then `other`'s (under `other`'s model name)."""
        details = None
        if self.details is not None or other.details is not None:
            details = ((self.details or PredictionDetails.unrecorded(len(self.ids)))
                       .joined(other.details or PredictionDetails.unrecorded(len(other.ids))))
        return StoredPredictions(other.model, self.ids + other.ids, self.instances + other.instances,
                                 self.tasks + other.tasks, self.values + other.values, details,
                                 self.written and other.written)


class HistoryBucket(NamedTuple):
    """The statistics of one closed history bucket of a model (`sidecar.worker.buckets`), as plain values.

    `bucket`: {"kind": "time", "seconds": s} or {"kind": "count", "instances": n}; `inputs`: feature name ->
    numeric or categorical summary; `outputs`: the predicted classes or the regression spread (None before the
    task is known); `drift`: detector -> windows, drifted, min_p_value; `outliers`: detector -> instances,
    outliers; `sampled`: the percentiles came from a uniform sample of the bucket's rows."""

    model: str
    bucket: dict[str, Any]
    start: float
    end: float
    instances: int
    requests: int
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, Any] | None
    drift: dict[str, dict[str, Any]]
    outliers: dict[str, dict[str, int]]
    sampled: bool = False


class JoinedTruth(NamedTuple):
    """A truth joined to its prediction (feedback to the history): task binary, multiclass or regression; `truth`
    and `predicted` are class labels (str) or numbers."""

    model: str
    task: str
    truth: str | float
    predicted: str | float
    time: float


DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 100.0)


class ShadowBatch(NamedTuple):
    """A shadow's answers compared with the primary's on the same requests, instance by instance (model = the
    primary's analysis name). A worker merges the batches it compared between two sends: counts add up, the
    rolling agreement and the output-drift verdict are the latest.

    - classification: `agreed` instances got the same class from both, `confusion` counts (primary class, shadow
      class) pairs; regression: `abs_diff` and `rel_diff` count |shadow - primary| and that over |primary|;
    - `agreement`: the share agreeing over the latest `recent` pairs (None for regression or before any pair);
    - `drift`: the latest paired window's output drift of the shadow against the primary (`p_value`, `drift`,
      `threshold`, `instances`, `features`: the worst few), with `drift_windows` / `drifted` counted.
    """

    model: str
    shadow: str
    task: str
    pairs: int
    agreed: int
    unmatched: int  # answers that could not be paired (instance counts differ, no analysable output)
    confusion: dict[tuple[str, str], int]
    abs_diff: Counted
    rel_diff: Counted
    agreement: float | None
    recent: int
    drift: dict[str, Any] | None = None
    drift_windows: int = 0
    drifted: int = 0


class VersionDrift(NamedTuple):
    """The outputs of one version (or label) of a model tested against its baseline version's recent outputs
    (different instances, so a two-sample test, not pairs). `version` and `baseline` are analysis names."""

    model: str
    version: str
    baseline: str
    baseline_source: str  # why that version is the baseline
    instances: int
    p_value: float
    drift: bool
    threshold: float
    features: list[dict[str, Any]]
    evaluated: int = 1
    drifted: int | None = None

    def counts(self) -> tuple[int, int]:
        return self.evaluated, int(self.drift) if self.drifted is None else self.drifted


class QualityEstimate(NamedTuple):
    """A classifier's quality estimated from its probabilities over one window, before labels (CBPE).

    `calibration`: "assumed" (the probabilities taken as calibrated: too few labels yet) or "isotonic" (mapped on
    `calibration_pairs` labelled instances); `classes`: per class index, precision, recall, f1 and expected support;
    `compared`: recent windows with labels, their estimate beside the realized accuracy of the labelled instances.
    """

    model: str
    window: int
    instances: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    calibration: str
    calibration_pairs: int
    classes: dict[str, dict[str, float]]
    compared: list[dict[str, Any]]


class ModelError(NamedTuple):
    """An unexpected failure while analysing a model's batch; the worker carries on with other batches."""

    model: str
    error: str


Result = (WorkerStarted | WorkerStopped | BatchDone | ModelStatus | DriftWindow | OutlierBatch | QualityBatch
          | Predictions | StoredPredictions | ModelError | ShadowBatch | VersionDrift
          | HistoryBucket | QualityEstimate)
