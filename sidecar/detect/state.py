"""Per-model analysis state inside a worker: schema, reference, windows, detectors; and the worker's router.

`ModelState.ingest` takes the decoded exchanges of one model from one batch and returns small results:
predictions for the feedback store, data-quality counts, per-batch outlier counts, a drift verdict per detector
for each window that completed, and the model's status. `AnalysisState` decodes a batch of capture records and
routes them to the model states it creates on first sight.

TensorFlow is imported only through the detectors that need it (MMD with a TF backend, the autoencoder), and
only when they are configured.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sidecar.capture.records import CaptureRecord
from sidecar.codec import DEFAULT_OUTPUT, DecodeError, Exchange, decode_exchange
from sidecar.detect.features import (
    CATEGORICAL,
    NUMERIC,
    InputFeatures,
    OutputView,
    infer_kinds,
    infer_task,
    output_features,
    output_view,
    predictions,
)
from sidecar.detect.reference import (
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
from sidecar.detect.results import (
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
from sidecar.detect.settings import AnalysisSettings, ModelConfig
from sidecar.detect.windows import CountWindows, TimeWindows, Window, make_windows
from sidecar.detect.yielding import yield_point

log = logging.getLogger(__name__)
T = TypeVar("T")


class Detectors:
    """The detectors of a model with a complete reference, built from that reference."""

    def __init__(self, reference: Reference, settings: AnalysisSettings, config: ModelConfig,
                 output_names: list[str], output_kinds: list[str], output_reference: np.ndarray | None) -> None:
        from sidecar.detect.base import FeatureDriftDetector
        from sidecar.detect.outlier import MahalanobisOutlier

        inputs = reference.inputs
        self.numeric = np.array([i for i, kind in enumerate(reference.kinds) if kind == NUMERIC], dtype=np.int64)
        categorical = {i: _categories(inputs[:, i]) for i, kind in enumerate(reference.kinds) if kind == CATEGORICAL}
        self.feature_drift = None
        if inputs.shape[1]:
            self.feature_drift = FeatureDriftDetector(
                inputs, list(reference.features.names), categorical or None, test=settings.drift_test,
                correction=settings.drift_correction, alpha=settings.drift_p_value, detector_name="feature_drift")
        self.output_drift = None
        if output_reference is not None and output_names and np.isfinite(output_reference).any():
            output_categorical = {i: _categories(output_reference[:, i]) for i, kind in enumerate(output_kinds)
                                  if kind == CATEGORICAL}
            self.output_drift = FeatureDriftDetector(
                output_reference, output_names, output_categorical or None, test=settings.drift_test,
                correction=settings.drift_correction, alpha=settings.drift_p_value, detector_name="output_drift")
        numeric_reference = _finite_rows(inputs[:, self.numeric])
        usable = self.numeric.size > 0 and numeric_reference.shape[0] >= 3
        self.mahalanobis = MahalanobisOutlier(numeric_reference, fpr=settings.outlier_fpr) if usable else None
        self.failures: list[str] = []  # optional detectors that could not be built (the others still run)
        self.mmd = None
        self.center = numeric_reference.mean(axis=0) if numeric_reference.shape[0] else None
        spread = numeric_reference.std(axis=0) if numeric_reference.shape[0] else None
        self.scale = None if spread is None else np.where(spread > 0, spread, 1.0)
        if settings.mmd_enabled and self.numeric.size and numeric_reference.shape[0] >= 2:
            from sidecar.detect.mmd import MMDDrift

            try:
                self.mmd = MMDDrift(self.standardized(numeric_reference), permutations=settings.mmd_permutations,
                                    alpha=settings.drift_p_value)
            except Exception as exc:
                self.failures.append(f"mmd: {type(exc).__name__}: {exc}")
        self.autoencoder = None
        if config.autoencoder and self.numeric.size:
            try:
                from sidecar.detect.autoencoder import ReconstructionOutlier

                self.autoencoder = ReconstructionOutlier(config.autoencoder, numeric_reference,
                                                         settings.outlier_fpr)
            except Exception as exc:  # a missing or unusable SavedModel, or no TensorFlow
                self.failures.append(f"autoencoder: {type(exc).__name__}: {exc}")
        low = np.full(inputs.shape[1], -np.inf)
        high = np.full(inputs.shape[1], np.inf)
        if self.numeric.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features have no range
                low[self.numeric] = np.nanmin(inputs[:, self.numeric], axis=0)
                high[self.numeric] = np.nanmax(inputs[:, self.numeric], axis=0)
        self.low = np.where(np.isnan(low), -np.inf, low)
        self.high = np.where(np.isnan(high), np.inf, high)

    def standardized(self, numeric: np.ndarray) -> np.ndarray:
        """Numeric features on the reference's scale (MMD's kernel width would follow the widest feature)."""
        if self.center is None or self.scale is None:
            return numeric
        scaled: np.ndarray = (numeric - self.center) / self.scale
        return scaled


def _categories(column: np.ndarray) -> np.ndarray:
    return np.unique(column[np.isfinite(column)])


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

    def __init__(self, model: str, worker: int, settings: AnalysisSettings, state_dir: Path) -> None:
        self.model = model
        self.worker = worker
        self.settings = settings
        self.config = settings.model_config(model)
        self.directory = model_dir(state_dir, model)
        self.features: InputFeatures | None = None
        self.output: OutputSpec | None = None
        self.task: str | None = None if self.config.task == "auto" else self.config.task
        self.collector = ReferenceCollector(self.config.reference_size)
        self.reference: Reference | None = None
        self.restored = False
        self.saved: str | None = None
        self.reference_error: str | None = None
        self.detectors: Detectors | None = None
        self.output_names: list[str] = []
        self.output_kinds: list[str] = []
        self.windows: CountWindows | TimeWindows = make_windows(self.config, settings.window_min_instances)
        self._file_tried = False
        self._pending: list[Result] = []  # errors found outside a batch, reported with the next one
        saved = Reference.load(self.directory)
        if saved is not None and self._reusable(saved):
            self.restored = True
            self.saved = str(saved_path(self.directory))
            self.features = saved.features
            self.output = saved.output
            self._activate(saved)

    def _reusable(self, saved: Reference) -> bool:
        """A saved traffic reference counts when the model still has no reference file and the same target."""
        return (self.config.reference is None and saved.source == SOURCE_TRAFFIC
                and saved.instances == self.config.reference_size
                and saved.features.max_features == self.settings.max_features)

    # -- ingest ---------------------------------------------------------------------------------------------

    def ingest(self, items: Iterable[tuple[CaptureRecord, Exchange]]) -> tuple[list[Result], int]:
        """Analyse one batch of this model; returns the results and the number of instances analysed."""
        results: list[Result] = []
        issues: dict[tuple[str, str], int] = {}
        predicted: list[PredictedInstance] = []
        blocks: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = []
        instances = 0
        for record, exchange in items:
            instances += exchange.n_instances
            if self.features is None:
                self.features = InputFeatures.from_arrays(exchange.inputs, self.settings.max_features)
            elif self.reference is None:
                self.features.adopt_name(exchange.inputs)
                self._adopt_output_name(exchange.outputs)
            view = output_view(exchange.outputs, exchange.classes, exchange.method, self.config.output,
                               self.output.name if self.output is not None else None)
            self._learn_output(view)
            if view is not None and self.task is not None:
                predicted.extend(PredictedInstance(record.prediction_id, index, self.model, value)
                                 for index, value in enumerate(predictions(view, self.task)))
            extracted = self.features.extract(exchange.inputs, exchange.n_instances)
            for key, count in extracted.issues.items():
                issues[key] = issues.get(key, 0) + count
            if extracted.values is None:
                continue
            blocks.append((extracted.values, self._raw_outputs(view, exchange.n_instances),
                           np.full(exchange.n_instances, record.time)))
        if predicted and self.task is not None:
            results.append(Predictions(self.model, self._prediction_task(), predicted))
        if self.config.reference is not None and not self._file_tried and self.features is not None:
            self._load_reference_file()
        analysed = 0
        if blocks:
            inputs = np.concatenate([block[0] for block in blocks], axis=0)
            outputs = None if self.output is None else np.concatenate(
                [block[1] if block[1] is not None else np.full((block[0].shape[0], self.output.width), np.nan)
                 for block in blocks], axis=0)
            times = np.concatenate([block[2] for block in blocks])
            analysed = inputs.shape[0]
            results.extend(self._analyse(inputs, outputs, times))
            # after `_analyse`: a batch that completes the reference has its later instances checked against the
            # reference's range (its own instances lie inside that range)
            results.append(self._quality(inputs, issues, instances))
            issues = {}
        if issues:
            results.append(QualityBatch(self.model, instances, issues, 0.0))
        results.extend(self._pending)
        self._pending.clear()
        results.append(self.status())
        return results, analysed

    def tick(self, now: float) -> list[Result]:
        """Close time windows whose bucket has ended."""
        if self.detectors is None:
            return []
        windows = self.windows.poll(now)
        if not windows:
            return []
        results: list[Result] = []
        for window in windows:
            results.extend(self._evaluate(window))
        results.append(self.status())
        return results

    def _learn_output(self, view: OutputView | None) -> None:
        if view is None:
            return
        if self.output is None:
            self.output = OutputSpec(view.name, int(view.values.shape[1]), view.scalar, view.labels)
        if self.config.task != "auto" or self.reference is not None or view.name != self.output.name:
            return
        seen = infer_task(view)
        if self.task is None or (self.task == CLASSIFICATION and seen == REGRESSION):
            self.task = seen  # a single non-probability output demotes a model to regression until frozen

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
            width = self.output.width if self.output is not None else 0
            return "binary" if width <= 2 else "multiclass"
        return REGRESSION

    # -- reference ------------------------------------------------------------------------------------------

    def _load_reference_file(self) -> None:
        self._file_tried = True
        assert self.features is not None and self.config.reference is not None
        try:
            inputs, outputs = read_reference_file(self.config.reference, self.features, self.output)
        except ReferenceFileError as exc:
            self.reference_error = f"{exc}; collecting the reference from traffic instead"
            log.warning("model %s: %s", self.model, self.reference_error)
            return
        if outputs is not None and self.config.task == "auto":
            self.task = CLASSIFICATION if _all_probabilities(outputs) else REGRESSION
        self._complete(inputs, outputs, self.config.reference)

    def _complete(self, inputs: np.ndarray, outputs: np.ndarray | None, file: str | None) -> None:
        assert self.features is not None
        kinds = infer_kinds(inputs, self.features, self.settings.categorical_max_values)
        reference = reference_from_arrays(inputs, kinds, self.features, outputs, self.output, self.task, file)
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
                                       self.settings.max_features)
            self.output_names, self.output_kinds, output_reference = features.names, features.kinds, features.values
        self.detectors = Detectors(reference, self.settings, self.config, self.output_names, self.output_kinds,
                                   output_reference)
        for failure in self.detectors.failures:
            log.warning("model %s: detector not available: %s", self.model, failure)
            self._pending.append(ModelError(self.model, failure[:500]))

    # -- analysis -------------------------------------------------------------------------------------------

    def _analyse(self, inputs: np.ndarray, outputs: np.ndarray | None, times: np.ndarray) -> list[Result]:
        results: list[Result] = []
        if self.reference is None:
            taken = self.collector.add(inputs, outputs)
            if not self.collector.complete:
                return results
            width = self.output.width if self.output is not None else 0
            self._complete(self.collector.inputs(), self.collector.outputs(width), None)
            inputs, times = inputs[taken:], times[taken:]
            outputs = None if outputs is None else outputs[taken:]
        if self.detectors is None or inputs.shape[0] == 0:
            return results
        results.extend(self._outliers(inputs))
        features = None
        if outputs is not None and self.output is not None and self.task is not None and self.output_names:
            features = output_features(outputs, self.output.name, self.output.scalar, self.task,
                                       self.settings.max_features).values
        for window in self.windows.push(inputs, features, times):
            results.extend(self._evaluate(window))
        return results

    def _quality(self, inputs: np.ndarray, issues: dict[tuple[str, str], int], instances: int) -> QualityBatch:
        from sidecar.detect.quality import quality_counts

        assert self.features is not None
        detectors = self.detectors
        low = detectors.low if detectors is not None else np.full(inputs.shape[1], -np.inf)
        high = detectors.high if detectors is not None else np.full(inputs.shape[1], np.inf)
        counts, duration = _timed(lambda: quality_counts(inputs, low, high))
        merged = dict(issues)
        for (column, issue), count in _quality_items(counts):
            if count:
                key = (self.features.names[column], issue)
                merged[key] = merged.get(key, 0) + count
        return QualityBatch(self.model, instances, merged, duration)

    def _outliers(self, inputs: np.ndarray) -> list[Result]:
        detectors = self.detectors
        assert detectors is not None
        rows = _finite_rows(inputs[:, detectors.numeric]) if detectors.numeric.size else inputs[:0]
        if rows.shape[0] == 0:
            return []
        results: list[Result] = []
        for name, detector in (("mahalanobis", detectors.mahalanobis), ("autoencoder", detectors.autoencoder)):
            if detector is None:
                continue
            try:
                scores, duration = _timed(partial(_scores, detector, rows))
            except Exception as exc:  # a detector failure is reported, never fatal
                results.append(self._error(name, exc))
                continue
            threshold = float(detector.threshold)
            outliers = int(np.count_nonzero(scores > threshold))
            finite = scores[np.isfinite(scores)]
            results.append(OutlierBatch(self.model, name, int(rows.shape[0]), outliers, threshold,
                                        bucket_counts(finite.tolist(), SCORE_BUCKETS),
                                        float(finite.max()) if finite.size else None, duration))
        return results

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
        return ModelStatus(
            model=self.model, worker=self.worker, task=self.task,
            reference=ReferenceStatus(source=source, file=self.config.reference, instances=collected, target=target,
                                      complete=reference is not None, saved=self.saved, restored=self.restored,
                                      error=self.reference_error),
            windows=windows,
            inputs=list(self.features.names) if self.features is not None else [],
            outputs=list(self.output_names),
            ignored_features=self.features.ignored if self.features is not None else 0,
        )


def _all_probabilities(outputs: np.ndarray) -> bool:
    from sidecar.detect.features import looks_like_probabilities

    finite = _finite_rows(outputs)
    return finite.shape[0] > 0 and looks_like_probabilities(finite)


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


class AnalysisState:
    """All model states of one worker: decodes records, routes them by model, reports decode errors."""

    def __init__(self, worker: int, settings: AnalysisSettings, state_dir: Path) -> None:
        self.worker = worker
        self.settings = settings
        self.state_dir = state_dir
        self.models: dict[str, ModelState] = {}

    def model(self, name: str) -> ModelState:
        state = self.models.get(name)
        if state is None:
            state = self.models[name] = ModelState(name, self.worker, self.settings, self.state_dir)
        return state

    def process(self, records: list[CaptureRecord]) -> tuple[list[Result], dict[tuple[str, str, str], int],
                                                             dict[str, int]]:
        """Results, decode errors by (model, protocol, reason) and instances analysed per model."""
        errors: dict[tuple[str, str, str], int] = {}
        by_model: dict[str, list[tuple[CaptureRecord, Exchange]]] = {}
        for record in records:
            yield_point()
            if not record.ok:
                continue  # failed calls carry no prediction; the request metrics count them
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
            by_model.setdefault(record.model, []).append((record, exchange))
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
        return results, errors, analysed

    def tick(self, now: float) -> list[Result]:
        results: list[Result] = []
        for name, state in self.models.items():
            try:
                results.extend(state.tick(now))
            except Exception as exc:
                log.exception("closing windows of model %s failed", name)
                results.append(ModelError(name, f"{type(exc).__name__}: {exc}"[:500]))
        return results
