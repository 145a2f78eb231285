"""Messages between the main process and the analysis workers: small, picklable, numpy-free.

Workers send a list of results per processed batch (and per time tick); the main process applies them to the
metrics, the monitor snapshots and the prediction hook. Every field is a plain Python value (str, int, float,
bool, lists, dicts), so the main process never needs numpy to read them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

CLASSIFICATION = "classification"
REGRESSION = "regression"


class WorkerStarted(NamedTuple):
    worker: int
    generation: int
    pid: int


class WorkerStopped(NamedTuple):
    worker: int
    generation: int


class BatchDone(NamedTuple):
    """Sent last for a batch: frees its slot in the pool. `lags` are capture-to-result seconds, one per record."""

    worker: int
    generation: int
    batch_id: int
    records: int
    lags: list[float]
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
    inputs: list[str]
    outputs: list[str]
    ignored_features: int


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


class DriftWindow(NamedTuple):
    """One detector's verdict on its latest window. `features` is empty for multivariate detectors (MMD).

    A worker merges the windows it evaluated between two sends (`sidecar.detect.coalesce`): the fields describe the
    latest, `evaluated` counts them all and `drifted` (None: just this one's `drift`) those that drifted.
    """

    model: str
    detector: str
    window: dict[str, Any]  # index, instances, start, end (capture times)
    drift: bool
    p_value: float
    threshold: float
    distance: float | None
    features: list[FeatureStat]
    duration: float
    evaluated: int = 1
    drifted: int | None = None

    def counts(self) -> tuple[int, int]:
        """(windows evaluated, windows drifted) that this result stands for."""
        return self.evaluated, int(self.drift) if self.drifted is None else self.drifted


class OutlierBatch(NamedTuple):
    """Per-instance outlier scores of one batch (a sample of them when the batch is large) and the exact count."""

    model: str
    detector: str
    instances: int
    outliers: int
    threshold: float
    scores: list[float]
    duration: float


class QualityBatch(NamedTuple):
    """Data-quality issue counts of one batch: (feature, issue) -> instances; issue names as in QUALITY_ISSUES."""

    model: str
    instances: int
    counts: dict[tuple[str, str], int]
    duration: float


QUALITY_ISSUES = ("missing", "nan", "inf", "below_range", "above_range", "shape", "dtype")


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


class Predictions(NamedTuple):
    """The predictions of one model in one batch; `task` is "binary", "multiclass" or "regression"."""

    model: str
    task: str
    items: list[PredictedInstance]


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


class ModelError(NamedTuple):
    """An unexpected failure while analysing a model's batch; the worker carries on with other batches."""

    model: str
    error: str


Result = (WorkerStarted | WorkerStopped | BatchDone | ModelStatus | DriftWindow | OutlierBatch | QualityBatch
          | Predictions | StoredPredictions | ModelError)
