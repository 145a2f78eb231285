"""Comparing models where they serve: a shadow against its primary, a canary version against its baseline.

`ShadowComparison` (one analysis name and one shadow) takes shadow records, each holding the shadow's and the
primary's answers to the same request (`CaptureRecord.shadow`), decoded by the caller: per instance, whether both
gave the same class (with the confusion of primary class against shadow class) or, for regression, how far apart
they are; every `window_size` pairs, a two-sample test of the shadow's outputs against the primary's on the same
inputs; and the shadow's predictions under the shadow's name and id (`model~shadow`, `id~shadow`) for the
feedback store, so ground truth scores both models on the same instances.

`VersionComparisons` (per model served with `by_version`) keeps each version's latest outputs and, whenever a
version has `window_size` new ones, tests them against the baseline version's latest (different instances: only
the distributions are compared). The baseline is the version labelled `stable` when requests name it, else the
lowest version number seen, else the first version seen; the result says which and why.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from sidecar.codec import Exchange
from sidecar.messages.names import shadow_name
from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import (
    CLASSIFICATION,
    DIFF_BUCKETS,
    REGRESSION,
    ModelError,
    PredictedInstance,
    Predictions,
    Result,
    ShadowBatch,
    VersionDrift,
    bucket_counts,
)
from sidecar.worker.features import (
    CATEGORICAL,
    OutputView,
    infer_task,
    is_class_ids,
    output_features,
    output_view,
    predicted_classes,
    predictions,
)
from sidecar.worker.settings import AnalysisSettings

log = logging.getLogger(__name__)
WORST_FEATURES = 5
BASELINE_LABEL = "stable"


def _drift_test(reference: np.ndarray, current: np.ndarray, names: list[str], kinds: list[str],
                settings: AnalysisSettings) -> Any:
    from sidecar.detectors.feature_drift import FeatureDriftDetector

    categorical = {i: np.unique(reference[:, i][np.isfinite(reference[:, i])]) for i, kind in enumerate(kinds)
                   if kind == CATEGORICAL}
    detector = FeatureDriftDetector(reference, names, categorical or None, test=settings.drift_test,
                                    correction=settings.drift_correction, alpha=settings.drift_p_value,
                                    detector_name="output_drift")
    return detector.test(current)


def _verdict(verdict: Any, instances: int) -> dict[str, Any]:
    features = sorted(getattr(verdict, "features", None) or [], key=lambda item: float(item.adjusted_p_value))
    return {"p_value": float(verdict.p_value), "drift": bool(verdict.drift), "threshold": float(verdict.threshold),
            "instances": instances,
            "features": [{"name": str(item.name), "kind": str(item.kind), "statistic": float(item.statistic),
                          "adjusted_p_value": float(item.adjusted_p_value), "drift": bool(item.drift)}
                         for item in features[:WORST_FEATURES]]}


class Outputs:
    """What a model's state knows of its output: which one is analysed, the task, whether it holds class ids."""

    def __init__(self, name: str | None, task: str | None, class_ids: bool, configured: str | None) -> None:
        self.name = name
        self.task = task
        self.class_ids = class_ids
        self.configured = configured

    def view(self, exchange: Exchange, signature: Any) -> OutputView | None:
        return output_view(exchange.outputs, exchange.classes, exchange.method, self.configured, self.name, signature)


def _class_labels(view: OutputView, class_ids: bool) -> list[str]:
    classes = predicted_classes(view.values, class_ids).tolist()
    if view.labels is not None and not class_ids:
        return [view.labels[index] for index in classes]
    return [str(index) for index in classes]


class ShadowComparison:
    def __init__(self, model: str, shadow: str, settings: AnalysisSettings, window: int) -> None:
        self.model = model
        self.shadow = shadow
        self.name = shadow_name(model, shadow)
        self.settings = settings
        self.window = window
        self.recent: deque[bool] = deque(maxlen=window)
        self.primary_rows: list[np.ndarray] = []
        self.shadow_rows: list[np.ndarray] = []
        self.rows = 0
        self.feature_names: list[str] = []
        self.feature_kinds: list[str] = []
        self.task: str | None = None
        self.told_columns = False

    def ingest(self, items: Iterable[tuple[CaptureRecord, Exchange, Exchange]], outputs: Outputs,
               signature: Any) -> list[Result]:
        pairs = agreed = unmatched = 0
        confusion: dict[tuple[str, str], int] = {}
        abs_diffs: list[float] = []
        rel_diffs: list[float] = []
        predicted: list[PredictedInstance] = []
        results: list[Result] = []
        drift: dict[str, Any] | None = None
        windows = drifted = 0
        task = outputs.task
        for record, primary, shadow in items:
            first = outputs.view(primary, signature)
            second = outputs.view(shadow, signature)
            if first is None or second is None or first.values.shape != second.values.shape:
                unmatched += max(primary.n_instances, 1)
                continue
            class_ids = outputs.class_ids or (outputs.task is None and is_class_ids(first, False))
            if task is None:
                task = infer_task(first, class_ids)
                if task is None:
                    unmatched += first.values.shape[0]
                    continue
            self.task = task
            count = first.values.shape[0]
            pairs += count
            if task == CLASSIFICATION:
                mine, theirs = _class_labels(first, class_ids), _class_labels(second, class_ids)
                for a, b in zip(mine, theirs, strict=True):
                    same = a == b
                    agreed += same
                    self.recent.append(same)
                    confusion[(a, b)] = confusion.get((a, b), 0) + 1
            else:
                if first.values.ndim > 1 and first.values.shape[1] > 1 and not self.told_columns:
                    self.told_columns = True
                    log.info("model %s: shadow %s: the regression outputs have %d columns; differences are "
                             "measured on column 0 only (the output drift test covers all)", self.model,
                             self.shadow, first.values.shape[1])
                p, s = first.values[:, 0], second.values[:, 0]
                difference = np.abs(s - p)
                abs_diffs.extend(difference.tolist())
                rel_diffs.extend((difference / np.maximum(np.abs(p), 1e-12)).tolist())
            predicted.extend(PredictedInstance(shadow_name(record.prediction_id, self.shadow), index, self.name, value)
                             for index, value in enumerate(predictions(second, task, class_ids)))
            verdict = self._push(first, second, task, class_ids)
            if verdict is not None:
                drift = verdict
                windows += 1
                drifted += int(verdict["drift"])
        if predicted and task is not None:
            results.append(Predictions(self.name, _prediction_task(task, predicted), predicted))
        if pairs or unmatched:
            agreement = (sum(self.recent) / len(self.recent)) if self.recent and task == CLASSIFICATION else None
            results.append(ShadowBatch(self.model, self.shadow, task or "unknown", pairs, agreed, unmatched, confusion,
                                       bucket_counts(abs_diffs, DIFF_BUCKETS), bucket_counts(rel_diffs, DIFF_BUCKETS),
                                       agreement, len(self.recent) if task == CLASSIFICATION else 0, drift, windows,
                                       drifted))
        return results

    def _push(self, first: OutputView, second: OutputView, task: str, class_ids: bool) -> dict[str, Any] | None:
        """Add the pair's outputs to the paired window; test it when full."""
        mine = output_features(first.values, first.name, first.scalar, task, self.settings.max_features, class_ids)
        theirs = output_features(second.values, second.name, second.scalar, task, self.settings.max_features,
                                 class_ids)
        if self.feature_names and mine.names != self.feature_names:
            self.primary_rows, self.shadow_rows, self.rows = [], [], 0
        self.feature_names, self.feature_kinds = mine.names, mine.kinds
        self.primary_rows.append(mine.values)
        self.shadow_rows.append(theirs.values)
        self.rows += mine.values.shape[0]
        if self.rows < self.window:
            return None
        reference = np.concatenate(self.primary_rows)
        current = np.concatenate(self.shadow_rows)
        self.primary_rows, self.shadow_rows, self.rows = [], [], 0
        try:
            return _verdict(_drift_test(reference, current, self.feature_names, self.feature_kinds, self.settings),
                            current.shape[0])
        except Exception:  # a failed test is logged; the comparison goes on
            log.exception("model %s: output drift of shadow %s failed", self.model, self.shadow)
            return None


def _prediction_task(task: str, items: list[PredictedInstance]) -> str:
    if task == REGRESSION:
        return REGRESSION
    first = items[0].predicted
    return "binary" if isinstance(first, list) and len(first) == 2 and not isinstance(first[0], list) else (
        "multiclass")


class VersionComparisons:
    """The versions of one model analysed apart, their latest outputs compared with the baseline version's."""

    def __init__(self, model: str, settings: AnalysisSettings, window: int) -> None:
        self.model = model
        self.settings = settings
        self.window = window
        self.outputs: dict[str, deque[np.ndarray]] = {}  # analysis name -> latest output feature rows
        self.fresh: dict[str, int] = {}  # rows added since the version was last tested
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.first_seen: list[str] = []
        self.told_baseline: tuple[str, str] | None = None
        self.left_out: set[str] = set()  # versions whose outputs have another shape, said once each

    def push(self, name: str, values: np.ndarray, feature_names: list[str], kinds: list[str]) -> list[Result]:
        """Add a version's output rows; a version whose outputs do not fit the others' is left out, which is said
        once (a log line and a ModelError: /v1/monitor's last_error, sidecar_model_errors_total)."""
        if self.names and feature_names != self.names:
            if name in self.left_out:
                return []
            self.left_out.add(name)
            message = (f"{name}: outputs {feature_names[:5]} do not match the other versions' {self.names[:5]}; "
                       "this version is left out of the version comparison")
            log.warning("model %s: %s", self.model, message)
            return [ModelError(name, message)]
        self.names, self.kinds = feature_names, kinds
        rows = self.outputs.get(name)
        if rows is None:
            rows = self.outputs[name] = deque(maxlen=self.window)
            self.first_seen.append(name)
        rows.extend(values)
        self.fresh[name] = self.fresh.get(name, 0) + values.shape[0]
        return []

    def baseline(self) -> tuple[str, str] | None:
        versions = {name.rpartition("@")[2]: name for name in self.outputs}
        if BASELINE_LABEL in versions:
            return versions[BASELINE_LABEL], f"the version labelled {BASELINE_LABEL}"
        numbers = sorted((int(version), name) for version, name in versions.items() if version.isdigit())
        if numbers:
            return numbers[0][1], "the lowest version number seen (no requests named the label stable)"
        return (self.first_seen[0], "the first version seen") if self.first_seen else None

    def evaluate(self) -> list[Result]:
        chosen = self.baseline()
        if chosen is None:
            return []
        baseline, why = chosen
        if chosen != self.told_baseline:
            self.told_baseline = chosen
            log.info("model %s: versions are compared with baseline %s, %s", self.model, baseline, why)
        reference_rows = self.outputs[baseline]
        if len(reference_rows) < self.window:
            return []
        results: list[Result] = []
        for name, rows in self.outputs.items():
            if name == baseline or len(rows) < self.window or self.fresh.get(name, 0) < self.window:
                continue
            self.fresh[name] = 0
            try:
                verdict = _drift_test(np.array(reference_rows), np.array(rows), self.names, self.kinds, self.settings)
            except Exception:
                log.exception("model %s: output drift of %s against %s failed", self.model, name, baseline)
                continue
            summary = _verdict(verdict, len(rows))
            results.append(VersionDrift(self.model, name, baseline, why, len(rows), summary["p_value"],
                                        summary["drift"], summary["threshold"], summary["features"]))
        return results

