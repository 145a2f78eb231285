"""Per-model analysis state inside a worker: schema, reference, windows, detectors; and the worker's router.

`ModelState.ingest` takes the decoded exchanges of one model from one batch and returns small results:
predictions for the feedback store (with each instance's version, outlier scores and flags and data-quality issues:
`details.py`), data-quality counts, per-batch outlier counts, a drift verdict per detector
for each window that completed, and the model's status. `AnalysisState` decodes a batch of capture records and
routes them to the model states it creates on first sight.

TensorFlow is imported only through the detectors that need it (MMD with a TF backend, the autoencoder), and
only when they are configured.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sidecar.codec import DEFAULT_OUTPUT, DecodeError, Exchange, decode_exchange
from sidecar.detectors.robust import centre_spread, extreme_rows
from sidecar.messages.names import served_model, shadow_name
from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import (
    CLASSIFICATION,
    REGRESSION,
    SCORE_BUCKETS,
    DriftWindow,
    FeatureStat,
    ModelError,
    ModelStatus,
    OutlierBatch,
    PackedFeatures,
    PredictedInstance,
    Predictions,
    QualityBatch,
    ReferenceStatus,
    Result,
    bucket_counts,
)
from sidecar.worker.buckets import BucketColumns, BucketOutputs, Buckets, OutlierRows
from sidecar.worker.comparisons import Outputs, ShadowComparison, VersionComparisons
from sidecar.worker.details import DetailsBuilder, exchange_issue_bits
from sidecar.worker.estimation import QualityEstimator
from sidecar.worker.features import (
    CATEGORICAL,
    CODE,
    EXCLUDED,
    FROM_CONFIG,
    FROM_DATA,
    FROM_SIGNATURE,
    IMAGE,
    NUMERIC,
    TEXT,
    InputFeatures,
    OutputView,
    infer_kinds,
    infer_task,
    is_class_ids,
    output_features,
    output_view,
    predictions,
)
from sidecar.worker.images import IMAGE_SIZE
from sidecar.worker.layout import Layout
from sidecar.worker.recent import RecentSample
from sidecar.worker.reference import (
    SOURCE_FILE,
    SOURCE_TRAFFIC,
    OutputSpec,
    Reference,
    ReferenceCollector,
    ReferenceFileError,
    model_dir,
    read_reference_file,
    reference_from_arrays,
    saved_path,
)
from sidecar.worker.settings import AnalysisSettings, ModelConfig
from sidecar.worker.signature import Signature, SignatureFetcher
from sidecar.worker.windows import CountWindows, TimeWindows, Window, make_windows
from sidecar.worker.yielding import yield_point

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_STATUS_NAMES = 256  # feature names a status carries (a 3,072-pixel image has 3,072)


class Detectors:
    """The detectors of a model with a complete reference, built from that reference.

    Extreme reference rows (`sidecar.detectors.robust`) are set aside before anything is fitted; `status` says, per
    detector, whether it runs and why not."""

    def __init__(self, reference: Reference, settings: AnalysisSettings, config: ModelConfig,
                 output_names: list[str], output_kinds: list[str], output_reference: np.ndarray | None) -> None:
        from sidecar.detectors.feature_drift import FeatureDriftDetector
        from sidecar.detectors.mahalanobis import MahalanobisOutlier

        raw = reference.inputs
        self.raw_numeric = np.array([i for i, kind in enumerate(reference.kinds) if kind == NUMERIC], dtype=np.int64)
        numeric_raw = raw[:, self.raw_numeric]
        extreme = extreme_rows(numeric_raw)
        self.excluded_rows = {"extreme": int(extreme.sum()),
                              "non_finite": int(np.count_nonzero(~np.all(np.isfinite(numeric_raw), axis=1)))}
        clean = raw[~extreme]
        self.layout = Layout(list(reference.features.names), reference.kinds, clean, settings.max_features,
                             settings.projection_components)
        inputs = self.layout.transform(self.layout.detector_reference(clean))
        kinds = self.layout.kinds
        self.status: dict[str, dict[str, Any]] = {}
        self.numeric = np.array([i for i, kind in enumerate(kinds) if kind == NUMERIC], dtype=np.int64)
        categorical = {i: _categories(inputs[:, i]) for i, kind in enumerate(kinds) if kind == CATEGORICAL}
        self.feature_drift = None
        if inputs.shape[1]:
            self.feature_drift = FeatureDriftDetector(
                inputs, list(self.layout.names), categorical or None, test=settings.drift_test,
                correction=settings.drift_correction, alpha=settings.drift_p_value, detector_name="feature_drift",
                category_names=_category_names(reference.features, self.layout, categorical))
            self._built("feature_drift", f"{inputs.shape[1]} features")
        else:
            self._not_built("feature_drift", "no numeric or categorical input feature")
        self.output_drift = None
        if output_reference is not None and output_names and np.isfinite(output_reference).any():
            output_categorical = {i: _categories(output_reference[:, i]) for i, kind in enumerate(output_kinds)
                                  if kind == CATEGORICAL}
            self.output_drift = FeatureDriftDetector(
                output_reference, output_names, output_categorical or None, test=settings.drift_test,
                correction=settings.drift_correction, alpha=settings.drift_p_value, detector_name="output_drift")
            self._built("output_drift", f"{len(output_names)} output features")
        else:
            self._not_built("output_drift", "no analysed output in the reference")
        numeric_reference = _finite_rows(inputs[:, self.numeric])
        usable = self.numeric.size > 0 and numeric_reference.shape[0] >= 3
        self.mahalanobis = MahalanobisOutlier(numeric_reference, fpr=settings.outlier_fpr) if usable else None
        if usable:
            self._built("mahalanobis", f"{self.numeric.size} numeric features")
        else:
            self._not_built("mahalanobis", "no numeric input feature" if not self.numeric.size
                            else "fewer than 3 reference rows without a missing value")
        self.failures: list[str] = []  # optional detectors that could not be built (the others still run)
        self.mmd = None
        spread = centre_spread(numeric_reference) if numeric_reference.size else None  # no rows or no columns
        self.center = None if spread is None else spread.centre
        self.scale = None if spread is None else spread.spread
        if not settings.mmd_enabled:
            self._not_built("mmd", "disabled (mmd_enabled: false)")
        elif not (self.numeric.size and numeric_reference.shape[0] >= 2):
            self._not_built("mmd", "no numeric input feature with 2 complete reference rows")
        else:
            from sidecar.detectors.mmd import MMDDrift

            try:
                self.mmd = MMDDrift(self.standardized(numeric_reference), permutations=settings.mmd_permutations,
                                    alpha=settings.drift_p_value, between_blocks=yield_point)
                self._built("mmd", f"{self.numeric.size} numeric features")
            except Exception as exc:
                self._failed("mmd", exc)
        self.autoencoder = None
        if not config.autoencoder:
            self._not_built("autoencoder", "no autoencoder configured for the model")
        elif not self.raw_numeric.size:
            self._not_built("autoencoder", "no numeric input feature")
        else:
            try:
                from sidecar.detectors.autoencoder import ReconstructionOutlier

                self.autoencoder = ReconstructionOutlier(config.autoencoder, _finite_rows(clean[:, self.raw_numeric]),
                                                         settings.outlier_fpr)
                self._built("autoencoder", f"{self.raw_numeric.size} numeric input columns")
            except Exception as exc:  # a missing or unusable SavedModel, or no TensorFlow
                self._failed("autoencoder", exc)
        low = np.full(raw.shape[1], -np.inf)
        high = np.full(raw.shape[1], np.inf)
        if self.raw_numeric.size and clean.shape[0]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features have no range
                low[self.raw_numeric] = np.nanmin(clean[:, self.raw_numeric], axis=0)
                high[self.raw_numeric] = np.nanmax(clean[:, self.raw_numeric], axis=0)
        self.low = np.where(np.isnan(low), -np.inf, low)
        self.high = np.where(np.isnan(high), np.inf, high)

    def _built(self, name: str, basis: str) -> None:
        self.status[name] = {"active": True, "reason": basis}

    def _not_built(self, name: str, reason: str) -> None:
        self.status[name] = {"active": False, "reason": reason}

    def _failed(self, name: str, exc: BaseException) -> None:
        message = f"{name}: {type(exc).__name__}: {exc}"
        self.failures.append(message)
        self._not_built(name, message[:300])

    def standardized(self, numeric: np.ndarray) -> np.ndarray:
        """Numeric features on the reference's scale (MMD's kernel width would follow the widest feature)."""
        if self.center is None or self.scale is None:
            return numeric
        scaled: np.ndarray = (numeric - self.center) / self.scale
        return scaled

    def multivariate_rows(self, raw: np.ndarray) -> np.ndarray:
        """The complete analysed numeric rows of raw feature rows (what Mahalanobis scores)."""
        return _finite_rows(self.layout.transform(raw)[:, self.numeric]) if self.numeric.size else raw[:0, :0]


def _categories(column: np.ndarray) -> np.ndarray:
    return np.unique(column[np.isfinite(column)])


def _category_names(features: InputFeatures, layout: Layout, categorical: Mapping[int, np.ndarray]
                    ) -> dict[int, list[str]]:
    """Per analysed categorical column that codes strings, the name of each code. The reference's codes were all
    given before the detector is built, so the names known now name every category the drift test knows."""
    names: dict[int, list[str]] = {}
    for analysed in categorical:
        found = features.categories(int(layout.columns[analysed]))  # categorical columns are kept, not projected
        if found is not None:
            names[analysed] = found
    return names


def _finite_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.all(np.isfinite(matrix), axis=1)] if matrix.size else matrix


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    """`call()` and how long it took; a yield point after it (see `yielding`)."""
    start = time.perf_counter()
    value = call()
    duration = time.perf_counter() - start
    yield_point()
    return value, duration


def plain(value: Any) -> Any:
    """numpy scalars and arrays (also nested in dicts and lists) as plain Python values."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _scores(detector: Any, rows: np.ndarray) -> np.ndarray:
    return np.asarray(detector.score(rows), dtype=np.float64)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class ModelState:
    """Everything the analysis keeps about one model in the worker that owns it."""

    def __init__(self, model: str, worker: int, settings: AnalysisSettings, state_dir: Path,
                 signatures: SignatureFetcher | None = None) -> None:
        self.model = model
        self.worker = worker
        self.settings = settings
        self.config = settings.model_config(model)
        self.directory = model_dir(state_dir, model)
        self.signatures = signatures
        self.signature: Signature | None = None
        self.signature_error: str | None = None if signatures is not None and signatures.enabled else (
            "not asked (no upstream)")
        self._versions: set[str] = set()
        self.features: InputFeatures | None = None
        self.output: OutputSpec | None = None
        self.task: str | None = None if self.config.task == "auto" else self.config.task
        self.task_source = FROM_CONFIG if self.task is not None else None
        self._task_votes: dict[str, int] = {}
        self.collector = ReferenceCollector(self.config.reference_size)
        self.reference: Reference | None = None
        self.restored = False
        self.saved: str | None = None
        self.reference_error: str | None = None
        self.detectors: Detectors | None = None
        self.decisions: dict[str, Any] | None = None
        self.output_names: list[str] = []
        self.output_kinds: list[str] = []
        self.windows: CountWindows | TimeWindows = make_windows(self.config, settings.window_min_instances)
        self.buckets = Buckets(model, settings.history_bucket(), settings.history_max_levels,
                               settings.history_sample_rows)
        self._history_note: str | None = None  # when history_max_features leaves columns out
        self._history_excluded: dict[str, Any] | None = None  # the columns left out because the analysis excludes them
        self._bucket_layout: tuple[Reference | None, list[str], BucketColumns] | None = None  # and what it follows
        self._file_tried = False
        self._pending: list[Result] = []  # errors found outside a batch, reported with the next one
        self.batch_outputs: np.ndarray | None = None  # the latest batch's analysed outputs (version comparisons)
        self.estimator: QualityEstimator | None = None  # once the model shows probabilities
        self.recent: RecentSample | None = None  # the latest rows, for the feature importance (when it is on)
        if settings.importance_enabled:
            self.recent = RecentSample(self.directory, settings.importance_rows,
                                       min(30.0, settings.importance_interval / 2))
        saved = Reference.load(self.directory)
        if saved is not None and self._reusable(saved):
            self.restored = True
            self.saved = str(saved_path(self.directory))
            self.features = saved.features
            self.output = saved.output
            self.task_source = saved.task_source or self.task_source
            self._activate(saved)

    def _reusable(self, saved: Reference) -> bool:
        """A saved traffic reference counts when the model still has no reference file and the same target."""
        return (self.config.reference is None and saved.source == SOURCE_TRAFFIC
                and saved.instances == self.config.reference_size)

    # -- signature ------------------------------------------------------------------------------------------

    def _learn_signature(self, record: CaptureRecord) -> None:
        """Ask the model server for the signature of each version seen (answers are cached by the fetcher)."""
        if self.signatures is None or not self.signatures.enabled or record.version in self._versions:
            return
        self._versions.add(record.version)
        found = self.signatures.lookup(record.api, self.config.model, record.version)
        if found.signature is not None and not found.signature.empty:
            if self.signature is None:
                log.info("model %s: signature from the model server (%s): inputs %s, outputs %s", self.model,
                         found.signature.source, _describe_tensors(found.signature.inputs),
                         _describe_tensors(found.signature.outputs))
            self.signature, self.signature_error = found.signature, None
        elif self.signature is None:
            self.signature_error = found.error or "the model server declares no inputs or outputs"
            log.info("model %s: no signature from the model server (%s); types come from the data", self.model,
                     self.signature_error)

    # -- ingest ---------------------------------------------------------------------------------------------

    def ingest(self, items: Iterable[tuple[CaptureRecord, Exchange]]) -> tuple[list[Result], int]:
        """Analyse one batch of this model; returns the results and the number of instances analysed."""
        results: list[Result] = []
        issues: dict[tuple[str, str], int] = {}
        predicted: list[PredictedInstance] = []
        details = DetailsBuilder()
        blocks: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = []
        estimated: list[tuple[list[tuple[str, int]], np.ndarray]] = []
        instances = 0
        rows = 0  # analysed rows of the batch so far
        for record, exchange in items:
            instances += exchange.n_instances
            self._learn_signature(record)
            if self.features is None:
                self.features = InputFeatures.from_arrays(exchange.inputs, self.signature)
            elif self.reference is None:
                self.features.adopt_name(exchange.inputs)
                self._adopt_output_name(exchange.outputs)
            view = output_view(exchange.outputs, exchange.classes, exchange.method, self.config.output,
                               self.output.name if self.output is not None else None, self.signature)
            self._learn_output(view)
            kept = len(predicted)
            if view is not None and self.task is not None and self.output is not None:
                predicted.extend(PredictedInstance(record.prediction_id, index, self.model, value)
                                 for index, value in enumerate(predictions(view, self.task, self.output.class_ids)))
                if self._estimable(view):
                    estimated.append(([(record.prediction_id, index) for index in range(view.values.shape[0])],
                                      view.values))
            extracted = self.features.extract(exchange.inputs, exchange.n_instances)
            for key, count in extracted.issues.items():
                issues[key] = issues.get(key, 0) + count
            values = extracted.values
            if len(predicted) > kept:
                details.add(len(predicted) - kept, record.version or record.label,
                            exchange_issue_bits(extracted.issues), None if values is None else rows,
                            0 if values is None else values.shape[0])
            if values is None:
                continue
            rows += values.shape[0]
            blocks.append((values, self._raw_outputs(view, exchange.n_instances),
                           np.full(exchange.n_instances, record.time)))
        if estimated:
            results.extend(self._estimate(estimated))
        if self.config.reference is not None and not self._file_tried and self.features is not None:
            self._load_reference_file()
        analysed = 0
        self.batch_outputs = None
        verdicts: dict[str, OutlierRows] = {}
        row_issues = None
        if blocks:
            inputs = np.concatenate([block[0] for block in blocks], axis=0)
            outputs = None if self.output is None else np.concatenate(
                [block[1] if block[1] is not None else np.full((block[0].shape[0], self.output.width), np.nan)
                 for block in blocks], axis=0)
            self.batch_outputs = outputs
            times = np.concatenate([block[2] for block in blocks])
            starts = np.concatenate([np.arange(block[0].shape[0]) == 0 for block in blocks])  # a request's first row
            analysed = inputs.shape[0]
            analysis, verdicts = self._analyse(inputs, outputs, times)
            results.extend(analysis)
            results.extend(self._history(inputs, outputs, times, starts, verdicts))
            # after `_analyse`: a batch that completes the reference has its later instances checked against the
            # reference's range (its own instances lie inside that range)
            quality, row_issues = self._quality(inputs, issues, instances, per_row=bool(predicted))
            results.append(quality)
            issues = {}
        if issues:
            results.append(QualityBatch(self.model, instances, issues, 0.0))
        if predicted and self.task is not None:
            results.append(Predictions(self.model, self._prediction_task(), predicted,
                                       details.build(verdicts, row_issues)))
        results.extend(self._pending)
        self._pending.clear()
        results.append(self.status())
        return results, analysed

    def _estimable(self, view: OutputView) -> bool:
        """Probabilities of a classifier (not class ids, not a classify call's scores) with a prediction id."""
        output = self.output
        return (self.settings.quality_estimation and self.task == CLASSIFICATION and output is not None
                and not output.class_ids and view.labels is None and view.name == output.name
                and view.values.ndim == 2 and view.values.shape[0] > 0 and _all_probabilities(view.values))

    def _estimate(self, blocks: list[tuple[list[tuple[str, int]], np.ndarray]]) -> list[Result]:
        estimator = self.estimator
        if estimator is None:
            settings = self.settings
            estimator = self.estimator = QualityEstimator(
                self.model, self.config.window_size, settings.estimation_min_labels,
                settings.estimation_calibration_pairs, settings.estimation_memory)
        results: list[Result] = []
        for keys, values in blocks:
            try:
                results.extend(estimator.add(keys, np.asarray(values, dtype=np.float64)))
            except Exception as exc:
                results.append(self._error("quality_estimate", exc))
        return results

    def label(self, labels: list[tuple[str, int, bool]]) -> list[Result]:
        """Joined feedback for this model's predictions (whether each was right): the estimate's calibration."""
        if self.estimator is None:
            return []
        try:
            return list(self.estimator.label(labels))
        except Exception as exc:
            return [self._error("quality_estimate", exc)]

    def tick(self, now: float) -> list[Result]:
        """Close time windows and history buckets whose time has ended."""
        results: list[Result] = []
        windows = self.windows.poll(now) if self.detectors is not None else []
        for window in windows:  # before the buckets close, so a verdict finds the bucket its window ended in
            results.extend(self._evaluate(window))
        results.extend(self.buckets.poll(now))
        if self.recent is not None:
            try:
                self.recent.save_if_due()
            except OSError as exc:
                results.append(self._error("importance_sample", exc))
        if windows:
            results.append(self.status())
        return results

    def _learn_output(self, view: OutputView | None) -> None:
        """The analysed output's shape, whether it holds class ids, and (until the reference is complete) the task:
        the one most instances pointed to, so one odd answer never flips it."""
        if view is None:
            return
        configured = self.config.task == CLASSIFICATION
        if self.output is None:
            self.output = OutputSpec(view.name, int(view.values.shape[1]), view.scalar, view.labels,
                                     is_class_ids(view, configured))
        elif (self.reference is None and not self.output.class_ids and view.name == self.output.name
              and is_class_ids(view, configured)):
            self.output = self.output._replace(class_ids=True)
        if self.config.task != "auto" or self.reference is not None or view.name != self.output.name:
            return
        seen = infer_task(view, self.output.class_ids)
        if seen is None:
            return
        finite = int(np.count_nonzero(np.all(np.isfinite(view.values), axis=1)))
        self._task_votes[seen] = self._task_votes.get(seen, 0) + max(1, finite)
        self.task = max(self._task_votes, key=lambda task: (self._task_votes[task], task == CLASSIFICATION))
        declared = self.signature is not None and view.name in self.signature.outputs
        self.task_source = FROM_SIGNATURE if declared and self.output.class_ids else FROM_DATA

    def _adopt_output_name(self, outputs: Mapping[str, np.ndarray]) -> None:
        """An output learned from an unnamed REST prediction takes the name gRPC gives it."""
        if self.output is not None and self.output.name == DEFAULT_OUTPUT and len(outputs) == 1:
            [name] = outputs
            if name != DEFAULT_OUTPUT:
                self.output = self.output._replace(name=name)

    def _raw_outputs(self, view: OutputView | None, instances: int) -> np.ndarray | None:
        if self.output is None:
            return None
        if view is None or view.name != self.output.name or view.values.shape[1] != self.output.width:
            return np.full((instances, self.output.width), np.nan)
        return view.values

    def _prediction_task(self) -> str:
        if self.task == CLASSIFICATION:
            if self.output is not None and self.output.class_ids:
                return "multiclass"
            width = self.output.width if self.output is not None else 0
            return "binary" if width <= 2 else "multiclass"
        return REGRESSION

    # -- reference ------------------------------------------------------------------------------------------

    def reset_reference(self) -> None:
        """Forget the reference (and its saved copy): the next instances are collected as a new one."""
        for path in (self.directory / "reference.json", self.directory / "reference.npz"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.reference = None
        self.detectors = None
        self.decisions = None
        self.restored = False
        self.saved = None
        self.reference_error = None
        self._file_tried = False
        self.collector = ReferenceCollector(self.config.reference_size)
        self.windows = make_windows(self.config, self.settings.window_min_instances)
        if self.recent is not None:
            self.recent.clear()
        self.output_names, self.output_kinds = [], []
        if self.config.task == "auto":
            self.task, self.task_source, self._task_votes = None, None, {}
        log.info("model %s: reference reset; collecting %d instances again", self.model, self.config.reference_size)

    def _load_reference_file(self) -> None:
        self._file_tried = True
        assert self.features is not None and self.config.reference is not None
        try:
            inputs, outputs = read_reference_file(self.config.reference, self.features, self.output)
        except ReferenceFileError as exc:
            self.reference_error = f"{exc}; collecting the reference from traffic instead"
            log.warning("model %s: %s", self.model, self.reference_error)
            return
        if outputs is not None and self.config.task == "auto" and not (self.output and self.output.class_ids):
            self.task = CLASSIFICATION if _all_probabilities(outputs) else REGRESSION
            self.task_source = FROM_DATA
        self._complete(inputs, outputs, self.config.reference)

    def _complete(self, inputs: np.ndarray, outputs: np.ndarray | None, file: str | None) -> None:
        assert self.features is not None
        kinds = infer_kinds(inputs, self.features, self.settings.categorical_max_values, self.config.kinds)
        reference = reference_from_arrays(inputs, kinds.kinds, self.features, outputs, self.output, self.task, file,
                                          kinds.sources, self.task_source)
        try:
            self.saved = str(reference.save(self.directory))
        except OSError as exc:
            self.reference_error = f"cannot save the reference: {exc.strerror or exc}"
            log.warning("model %s: %s", self.model, self.reference_error)
        self._activate(reference)

    def _activate(self, reference: Reference) -> None:
        self.reference = reference
        if self.config.task == "auto" and reference.task is not None:
            self.task = reference.task
        output_reference = None
        if reference.outputs is not None and self.output is not None and self.task is not None:
            features = output_features(reference.outputs, self.output.name, self.output.scalar, self.task,
                                       self.settings.max_features, self.output.class_ids)
            self.output_names, self.output_kinds, output_reference = features.names, features.kinds, features.values
        self.detectors = Detectors(reference, self.settings, self.config, self.output_names, self.output_kinds,
                                   output_reference)
        for failure in self.detectors.failures:
            log.warning("model %s: detector not available: %s", self.model, failure)
            self._pending.append(ModelError(self.model, failure[:500]))
        self.decisions = self._decide()
        log.info("model %s: reference %s (%d instances); %s", self.model,
                 "restored" if self.restored else "complete", reference.instances, _decision_line(self.decisions))

    def _decide(self) -> dict[str, Any]:
        """What the analysis decided for this model and why (the monitor's `decisions`)."""
        reference, detectors = self.reference, self.detectors
        assert reference is not None and detectors is not None
        inputs: dict[str, dict[str, Any]] = {}
        sources = reference.sources or [FROM_DATA] * len(reference.kinds)
        for column, kind, source in zip(reference.features.columns, reference.kinds, sources, strict=True):
            entry = inputs.setdefault(column.input, {"columns": 0, "kinds": {}, "sources": {}})
            entry["columns"] += 1
            entry["kinds"][kind] = entry["kinds"].get(kind, 0) + 1
            entry["sources"][source] = entry["sources"].get(source, 0) + 1
        for spec in reference.features.specs:
            entry = inputs.setdefault(spec.name, {"columns": 0, "kinds": {}, "sources": {}})
            entry.update({"dtype": spec.dtype, "declared": spec.declared, "shape": list(spec.shape),
                          "encoding": spec.encoding})
            if spec.encoding == IMAGE:
                entry["note"] = f"encoded images decoded to {IMAGE_SIZE}x{IMAGE_SIZE} RGB pixels"
            elif _image_shaped(spec.shape) and not spec.is_string:
                entry["note"] = "an image-shaped tensor: its pixels are numeric columns"
            elif spec.encoding == TEXT:
                entry["note"] = ("strings: the category code is analysed when the reference has at most "
                                 f"{self.settings.categorical_max_values} levels, else the text summary")
        columns: dict[tuple[str, str], int] = {}
        for kind, source in zip(reference.kinds, sources, strict=True):
            columns[(kind, source)] = columns.get((kind, source), 0) + 1
        output = self.output
        return {
            "columns": [{"kind": kind, "source": source, "count": count}
                        for (kind, source), count in sorted(columns.items())],
            "signature": {"source": self.signature.source if self.signature is not None else None,
                          "error": self.signature_error if self.signature is None else None},
            "task": {"value": self.task, "source": self.task_source,
                     "class_ids": bool(output.class_ids) if output is not None else False},
            "output": None if output is None else _output_decisions(output, self.output_names,
                                                                    self.settings.max_features),
            "inputs": inputs,
            "layout": detectors.layout.describe(),
            "reference_rows_excluded": dict(detectors.excluded_rows),
            "detectors": {name: dict(entry) for name, entry in detectors.status.items()},
        }

    # -- analysis -------------------------------------------------------------------------------------------

    def _analyse(self, inputs: np.ndarray, outputs: np.ndarray | None,
                 times: np.ndarray) -> tuple[list[Result], dict[str, OutlierRows]]:
        """The detectors' results, and each outlier detector's verdict on the rows (row-aligned with `inputs`;
        rows taken into the reference are not scored)."""
        results: list[Result] = []
        rows = inputs.shape[0]
        taken = 0
        if self.reference is None:
            taken = self.collector.add(inputs, outputs)
            if not self.collector.complete:
                return results, {}
            width = self.output.width if self.output is not None else 0
            self._complete(self.collector.inputs(), self.collector.outputs(width), None)
            inputs, times = inputs[taken:], times[taken:]
            outputs = None if outputs is None else outputs[taken:]
        if self.detectors is None or inputs.shape[0] == 0:
            return results, {}
        if self.recent is not None:
            self.recent.add(inputs)
        outliers, verdicts = self._outliers(inputs)
        results.extend(outliers)
        if taken:  # the rows taken into the reference were not scored
            unscored = np.zeros(taken, dtype=bool)
            verdicts = {name: OutlierRows(np.concatenate([unscored, verdict.scored]),
                                          np.concatenate([unscored, verdict.outliers]),
                                          None if verdict.scores is None
                                          else np.concatenate([np.full(taken, np.nan), verdict.scores]))
                        for name, verdict in verdicts.items()}
        assert all(verdict.scored.shape[0] == rows for verdict in verdicts.values())
        features = None
        if outputs is not None and self.output is not None and self.task is not None and self.output_names:
            features = output_features(outputs, self.output.name, self.output.scalar, self.task,
                                       self.settings.max_features, self.output.class_ids).values
        for window in self.windows.push(self.detectors.layout.transform(inputs), features, times):
            results.extend(self._evaluate(window))
        return results, verdicts

    def _history(self, inputs: np.ndarray, outputs: np.ndarray | None, times: np.ndarray, starts: np.ndarray,
                 verdicts: dict[str, OutlierRows]) -> list[Result]:
        """Fold the batch's rows into the history buckets; returns the buckets that closed."""
        columns = self._bucket_columns()
        view = None
        if outputs is not None and self.output is not None and self.task in (CLASSIFICATION, REGRESSION):
            view = BucketOutputs(self.task, outputs, self.output.class_ids, self.output.labels)
        return list(self.buckets.add(inputs, times, starts, columns, view, verdicts))

    def _bucket_columns(self) -> BucketColumns:
        """The input columns the history summarises, as the analysis reads them: once the reference is complete, its
        kinds (numeric or categorical; the columns it excludes are left out, and the log and `/v1/monitor` say so
        once); before, every column, string codes categorical. At most `history_max_features` of them, the first.
        Coded levels are named by their strings (`InputFeatures.categories`). Worked out again when the reference
        or the input schema changes."""
        features = self.features
        assert features is not None
        reference = self.reference
        known = self._bucket_layout
        if known is not None and known[0] is reference and known[1] is features.names:
            return known[2]
        kinds = reference.kinds if reference is not None else None
        kept = [column for column in range(features.width) if kinds is None or kinds[column] != EXCLUDED]
        self._note_history_excluded([features.names[column] for column in range(features.width)
                                     if kinds is not None and kinds[column] == EXCLUDED])
        shown = kept[:self.settings.history_max_features]
        note = None
        if len(shown) < len(kept):
            note = (f"history buckets summarise the first {len(shown)} of {len(kept)} input columns "
                    "(history_max_features)")
            if note != self._history_note:
                log.info("model %s: %s", self.model, note)
        self._history_note = note
        categorical = [kinds[column] == CATEGORICAL if kinds is not None
                       else features.columns[column].role == CODE for column in shown]
        columns = BucketColumns([features.names[column] for column in shown], categorical, shown,
                                features.categories)
        self._bucket_layout = (reference, features.names, columns)
        return columns

    def _note_history_excluded(self, excluded: list[str]) -> None:
        """Say once per reference which columns the history leaves out because the analysis excludes them."""
        if not excluded:
            self._history_excluded = None
            return
        self._history_excluded = {
            "count": len(excluded), "columns": excluded[:MAX_STATUS_NAMES],
            "reason": "excluded from the analysis (decisions.inputs): a text's category code when the reference has "
                      f"more than {self.settings.categorical_max_values} levels (its text summary is analysed), "
                      "else its text summary (its category code is analysed)"}
        log.info("model %s: history buckets leave out the %d input columns the analysis excludes (%s%s)", self.model,
                 len(excluded), ", ".join(excluded[:8]), ", ..." if len(excluded) > 8 else "")

    def _quality(self, inputs: np.ndarray, issues: dict[tuple[str, str], int], instances: int,
                 per_row: bool) -> tuple[QualityBatch, np.ndarray | None]:
        """The batch's quality counts and, with `per_row`, each row's issues (see `quality_counts`)."""
        from sidecar.detectors.quality import quality_counts

        assert self.features is not None
        detectors = self.detectors
        low = detectors.low if detectors is not None else np.full(inputs.shape[1], -np.inf)
        high = detectors.high if detectors is not None else np.full(inputs.shape[1], np.inf)
        counts, duration = _timed(lambda: quality_counts(inputs, low, high, per_row))
        merged = dict(issues)
        for (column, issue), count in _quality_items(counts):
            if count:
                key = (self.features.names[column], issue)
                merged[key] = merged.get(key, 0) + count
        return QualityBatch(self.model, instances, merged, duration), counts.row_issues

    def _outliers(self, inputs: np.ndarray) -> tuple[list[Result], dict[str, OutlierRows]]:
        detectors = self.detectors
        assert detectors is not None
        results: list[Result] = []
        verdicts: dict[str, OutlierRows] = {}
        for name, detector in (("mahalanobis", detectors.mahalanobis), ("autoencoder", detectors.autoencoder)):
            if detector is None:
                continue
            columns = (detectors.layout.transform(inputs)[:, detectors.numeric] if name == "mahalanobis"
                       else inputs[:, detectors.raw_numeric])
            scored = np.all(np.isfinite(columns), axis=1) if columns.size else np.zeros(inputs.shape[0], dtype=bool)
            rows = columns[scored]
            if rows.shape[0] == 0:
                continue
            try:
                scores, duration = _timed(partial(_scores, detector, rows))
            except Exception as exc:  # a detector failure is reported, never fatal
                results.append(self._error(name, exc))
                continue
            threshold = float(detector.threshold)
            flagged = np.zeros(inputs.shape[0], dtype=bool)
            flagged[scored] = scores > threshold
            row_scores = np.full(inputs.shape[0], np.nan)
            row_scores[scored] = scores
            verdicts[name] = OutlierRows(scored, flagged, row_scores)
            outliers = int(np.count_nonzero(scores > threshold))
            finite = scores[np.isfinite(scores)]
            results.append(OutlierBatch(self.model, name, int(rows.shape[0]), outliers, threshold,
                                        bucket_counts(finite.tolist(), SCORE_BUCKETS),
                                        float(finite.max()) if finite.size else None, duration))
        return results, verdicts

    def _evaluate(self, window: Window) -> list[Result]:
        detectors = self.detectors
        assert detectors is not None
        results: list[Result] = []
        runs: list[tuple[str, Any, np.ndarray | None]] = [
            ("feature_drift", detectors.feature_drift, window.inputs),
            ("output_drift", detectors.output_drift, window.outputs),
        ]
        if detectors.mmd is not None:
            numeric = _finite_rows(window.inputs[:, detectors.numeric])
            runs.append(("mmd", detectors.mmd, detectors.standardized(numeric)))
        for name, detector, data in runs:
            if detector is None or data is None or data.shape[0] < 2:
                continue
            try:
                verdict, duration = _timed(partial(detector.test, data))
            except Exception as exc:
                results.append(self._error(name, exc))
                continue
            results.append(_drift_window(self.model, name, window, verdict, duration,
                                         self.settings.max_feature_labels))
            self.buckets.add_drift(name, window.end, bool(verdict.drift), _float(verdict.p_value))
        return results

    def _error(self, detector: str, exc: BaseException) -> ModelError:
        log.exception("model %s: detector %s failed", self.model, detector)
        return ModelError(self.model, f"{detector}: {type(exc).__name__}: {exc}"[:500])

    # -- status ---------------------------------------------------------------------------------------------

    def status(self) -> ModelStatus:
        reference = self.reference
        source = SOURCE_FILE if self.config.reference else SOURCE_TRAFFIC
        if reference is not None:
            source = reference.source
        collected = reference.instances if reference is not None else self.collector.collected
        target = reference.instances if reference is not None and reference.source == SOURCE_FILE else (
            self.config.reference_size)
        windows = dict(self.windows.describe())
        windows["history"] = {**self.buckets.describe(), "note": self._history_note,
                              "excluded": self._history_excluded}
        return ModelStatus(
            model=self.model, worker=self.worker, task=self.task,
            reference=ReferenceStatus(source=source, file=self.config.reference, instances=collected, target=target,
                                      complete=reference is not None, saved=self.saved, restored=self.restored,
                                      error=self.reference_error),
            windows=windows,
            inputs=list(self.features.names[:MAX_STATUS_NAMES]) if self.features is not None else [],
            outputs=list(self.output_names[:MAX_STATUS_NAMES]),
            input_columns=self.features.width if self.features is not None else 0,
            decisions=self.decisions,
        )


def _all_probabilities(outputs: np.ndarray) -> bool:
    """Most complete rows look like probabilities (a few odd rows do not make a classifier a regressor)."""
    finite = _finite_rows(outputs)
    if finite.shape[0] == 0:
        return False
    if outputs.shape[1] == 1:
        inside = np.count_nonzero((finite[:, 0] >= 0.0) & (finite[:, 0] <= 1.0))
    else:
        inside = np.count_nonzero(np.all((finite >= 0.0) & (finite <= 1.0), axis=1)
                                  & (np.abs(finite.sum(axis=1) - 1.0) <= 1e-3))
    return bool(inside >= 0.99 * finite.shape[0])


def _image_shaped(shape: tuple[int, ...]) -> bool:
    """(height, width) or (height, width, channels) with 1, 3 or 4 channels, at least 8 pixels a side."""
    return (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))) and min(shape[:2]) >= 8


def _output_decisions(output: OutputSpec, names: list[str], max_features: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": output.name, "width": output.width, "analysed": names[:MAX_STATUS_NAMES]}
    if output.width > max_features and not output.class_ids:
        entry["note"] = (f"output drift tests the predicted class and the first {max_features} of "
                         f"{output.width} output columns (max_features)")
    return entry


def _describe_tensors(tensors: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {info.dtype}{list(info.shape) if info.shape is not None else '[?]'}"
                     for name, info in list(tensors.items())[:8]) or "none"


def _decision_line(decisions: Mapping[str, Any]) -> str:
    """The decisions in one log line."""
    task = decisions["task"]
    inputs = "; ".join(
        f"{name}: {entry['columns']} columns " + ", ".join(f"{count} {kind}" for kind, count in entry["kinds"].items())
        + f" (from {'/'.join(entry['sources'])}" + (f", {entry['encoding']}" if entry.get("encoding") != "raw" else "")
        + ")" for name, entry in decisions["inputs"].items())
    layout = decisions["layout"]
    detectors = ", ".join(f"{name} {'on' if entry['active'] else 'off: ' + entry['reason']}"
                          for name, entry in decisions["detectors"].items())
    signature = decisions["signature"]
    return (f"task {task['value']} (from {task['source']}{', class ids' if task['class_ids'] else ''}); "
            f"signature {signature['source'] or _no_signature(signature['error'])}; inputs {inputs}; "
            f"analysed {layout['mode']} ({layout['analysed_columns']} columns); reference rows set aside "
            f"{decisions['reference_rows_excluded']}; detectors {detectors}")


def _no_signature(error: str | None) -> str:
    """Why a model has no signature: the model server's answer, or not asked yet (a reference restored from disk)."""
    return f"none: {error}" if error else "not asked yet"


_QUALITY_FIELDS = (("missing", "nan"), ("inf", "inf"), ("below_min", "below_range"), ("above_max", "above_range"))


def _quality_items(counts: Any) -> Iterable[tuple[tuple[int, str], int]]:
    """(column, issue) -> count pairs of a `QualityCounts`."""
    for field, issue in _QUALITY_FIELDS:
        values = getattr(counts, field, None)
        if values is None:
            continue
        for column, count in enumerate(np.asarray(values).tolist()):
            yield (column, issue), int(count)


def _drift_window(model: str, detector: str, window: Window, verdict: Any, duration: float,
                  labelled_features: int) -> DriftWindow:
    features = [FeatureStat(str(item.name), str(item.kind), _float(item.statistic), _float(item.p_value),
                            _float(item.adjusted_p_value), _float(item.effect_size), bool(item.drift),
                            plain(item.reference or {}), plain(item.current or {}))
                for item in (getattr(verdict, "features", None) or [])]
    distance = getattr(verdict, "distance", None)
    return DriftWindow(model, detector, window.describe(), bool(verdict.drift), _float(verdict.p_value),
                       _float(verdict.threshold), None if distance is None else _float(distance),
                       PackedFeatures.of(features, labelled_features), duration)


def record_model(items: list[tuple[CaptureRecord, Exchange]]) -> str:
    """The model-server name of a model's items (all share it)."""
    return items[0][0].model


class AnalysisState:
    """All model states of one worker: decodes records, routes them by model, reports decode errors."""

    def __init__(self, worker: int, settings: AnalysisSettings, state_dir: Path,
                 signatures: SignatureFetcher | None = None) -> None:
        self.worker = worker
        self.settings = settings
        self.state_dir = state_dir
        self.signatures = signatures
        self.models: dict[str, ModelState] = {}
        self.shadows: dict[tuple[str, str], ShadowComparison] = {}  # (analysis name, shadow) -> comparison
        self.versions: dict[str, VersionComparisons] = {}  # served model -> its versions' comparison
        self._told_truncated: set[str] = set()  # models whose truncated answers the log has mentioned

    def model(self, name: str) -> ModelState:
        state = self.models.get(name)
        if state is None:
            state = self.models[name] = ModelState(name, self.worker, self.settings, self.state_dir, self.signatures)
        return state

    def label(self, name: str, labels: list[tuple[str, int, bool]]) -> list[Result]:
        """Joined feedback of a model this worker analyses (a model it has not seen keeps none)."""
        state = self.models.get(name)
        return state.label(labels) if state is not None else []

    def reset_reference(self, name: str) -> list[Result]:
        """Forget one model's reference (also its saved copy, for a model this worker has not seen yet)."""
        self.model(name).reset_reference()
        return [self.models[name].status()]

    def process(self, records: list[CaptureRecord]) -> tuple[list[Result], dict[tuple[str, str, str], int],
                                                             dict[str, int]]:
        """Results, decode errors by (model, protocol, reason) and instances analysed per model."""
        errors: dict[tuple[str, str, str], int] = {}
        by_model: dict[str, list[tuple[CaptureRecord, Exchange]]] = {}
        shadowed: dict[tuple[str, str], list[tuple[CaptureRecord, Exchange, Exchange]]] = {}
        for record in records:
            yield_point()
            if not record.ok:
                continue  # failed calls carry no prediction; the request metrics count them
            if record.response_truncated:  # a streamed answer cut at the capture bound, or ended early
                key = (record.model, record.protocol, "truncated")
                errors[key] = errors.get(key, 0) + 1
                if record.model not in self._told_truncated:
                    self._told_truncated.add(record.model)
                    log.info("model %s: streamed answers cut at the capture bound (or ended early) are not "
                             "analysed; counted as sidecar_decode_errors_total{reason=\"truncated\"}", record.model)
                continue
            if record.shadow:
                self._decode_pair(record, shadowed, errors)
                continue
            try:
                exchange = decode_exchange(record)
            except DecodeError as exc:
                key = (record.model, record.protocol, exc.reason)
                errors[key] = errors.get(key, 0) + 1
                continue
            except Exception:  # a codec bug must not stop the worker
                log.exception("decoding a %s %s record of model %s failed", record.protocol, record.method,
                              record.model)
                key = (record.model, record.protocol, "unsupported")
                errors[key] = errors.get(key, 0) + 1
                continue
            name = self.settings.analysis_name(record.model, record.version or record.label)
            by_model.setdefault(name, []).append((record, exchange))
        results: list[Result] = []
        analysed: dict[str, int] = {}
        for name, items in by_model.items():
            try:
                model_results, count = self.model(name).ingest(items)
            except Exception as exc:
                log.exception("analysing model %s failed", name)
                results.append(ModelError(name, f"{type(exc).__name__}: {exc}"[:500]))
                continue
            results.extend(model_results)
            analysed[name] = count
            if name != record_model(items):
                results.extend(self._compare_versions(name))
        for (name, shadow), pairs in shadowed.items():
            try:
                results.extend(self._compare_shadow(name, shadow, pairs))
            except Exception as exc:
                log.exception("comparing shadow %s of model %s failed", shadow, name)
                results.append(ModelError(name, f"shadow {shadow}: {type(exc).__name__}: {exc}"[:500]))
        return results, errors, analysed

    def _decode_pair(self, record: CaptureRecord, shadowed: dict[tuple[str, str], list[tuple[CaptureRecord,
                     Exchange, Exchange]]], errors: dict[tuple[str, str, str], int]) -> None:
        """Decode a shadow's record: the shadow's answer and the primary's, to the same request."""
        try:
            theirs = decode_exchange(record)
            mine = decode_exchange(record._replace(response=record.primary_response, shadow="",
                                                   primary_response=b""))
        except DecodeError as exc:
            key = (shadow_name(record.model, record.shadow), record.protocol, exc.reason)
            errors[key] = errors.get(key, 0) + 1
            return
        except Exception:  # a codec bug must not stop the worker
            log.exception("decoding a shadow record of model %s failed", record.model)
            key = (shadow_name(record.model, record.shadow), record.protocol, "unsupported")
            errors[key] = errors.get(key, 0) + 1
            return
        name = self.settings.analysis_name(record.model, record.version or record.label)
        shadowed.setdefault((name, record.shadow), []).append((record, mine, theirs))

    def _compare_shadow(self, name: str, shadow: str,
                        pairs: list[tuple[CaptureRecord, Exchange, Exchange]]) -> list[Result]:
        state = self.model(name)
        comparison = self.shadows.get((name, shadow))
        if comparison is None:
            comparison = self.shadows[(name, shadow)] = ShadowComparison(name, shadow, self.settings,
                                                                         state.config.window_size)
            log.info("model %s: comparing shadow %s with the primary, instance by instance (output drift every %d "
                     "pairs)", name, shadow, state.config.window_size)
        output = state.output
        outputs = Outputs(output.name if output is not None else None, state.task,
                          bool(output is not None and output.class_ids), state.config.output)
        return comparison.ingest(pairs, outputs, state.signature)

    def _compare_versions(self, name: str) -> list[Result]:
        """Add a version's latest outputs to its model's version comparison and test what is due."""
        state = self.models[name]
        outputs, output = state.batch_outputs, state.output
        if outputs is None or output is None or state.task is None:
            return []
        served = served_model(name)
        comparison = self.versions.get(served)
        if comparison is None:
            comparison = self.versions[served] = VersionComparisons(served, self.settings, state.config.window_size)
        finite = outputs[np.all(np.isfinite(outputs), axis=1)]
        if finite.shape[0]:
            features = output_features(finite, output.name, output.scalar, state.task, self.settings.max_features,
                                       output.class_ids)
            said = comparison.push(name, features.values, features.names, features.kinds)
            if said:
                return said + comparison.evaluate()
        return comparison.evaluate()

    def tick(self, now: float) -> list[Result]:
        results: list[Result] = []
        for name, state in self.models.items():
            try:
                results.extend(state.tick(now))
            except Exception as exc:
                log.exception("closing windows of model %s failed", name)
                results.append(ModelError(name, f"{type(exc).__name__}: {exc}"[:500]))
        return results
