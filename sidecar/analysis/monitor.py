"""The monitor drill-down (`GET /v1/monitor/{model}`): the latest analysis state of each model, as JSON-able dicts.

Kept in the main process from the workers' results, so it survives worker restarts and answers without asking
a worker. A snapshot holds:

- `model`, `task`, `worker`, `updated` (Unix time of the latest result);
- `reference`: source (`traffic` or `file`), file, instances, target, complete, saved (path), restored
  (reused from the state directory after a restart), error;
- `windows`: mode and size/step/seconds, windows evaluated so far;
- `features`: input feature names (the first 256), output feature names, input columns in all;
- `decisions` (once the reference is complete): where the signature came from, the task and its source, per input
  its columns by kind and by source (signature, data, config) and its encoding, whether the detectors test features
  one by one or through a projection, reference rows set aside as extreme, and each detector active or not with
  the reason;
- `detectors`: per drift detector, the latest window (index, instances, capture-time span), drift, p-value,
  threshold, distance, windows evaluated and drifted, and per feature: kind, statistic, p-value, adjusted
  p-value, effect size, drift and the reference-vs-current summaries;
- `outliers`: per outlier detector, threshold, instances scored, outliers, and the latest batch;
- `data_quality`: instances checked and issue counts per feature (or input) and issue (the key `quality` is left
  to the feedback's model-quality metrics);
- `analysed_instances`, `decode_errors` (per protocol and reason), `errors` (count and the latest message);
- `shadows` (when the model has a shadow): per shadow, the task, instances compared and unmatched, agreement (over
  all compared instances and over the latest window), the confusion matrix of primary class against shadow class,
  for regression the mean absolute and relative differences with their bucket counts, and the latest paired
  output-drift verdict with its windows evaluated and drifted;
- `estimated_quality` (a classifier with probability outputs): the latest window's accuracy, precision, recall and F1
  estimated from the probabilities before labels (CBPE; macro averages, per class under `classes`), whether the
  probabilities were calibrated on labels or assumed calibrated, and recent windows' estimates beside the accuracy
  realized on their labelled instances;
- `versions` (a model served with `by_version`): per version, its latest outputs tested against the baseline
  version's (p-value, drift, the worst output features), which version is the baseline and why.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sidecar.analysis.metrics import MAX_CLASS_LABELS, FeatureLabels
from sidecar.messages.results import (
    DIFF_BUCKETS,
    BatchDone,
    DriftWindow,
    ModelError,
    ModelStatus,
    OutlierBatch,
    QualityBatch,
    QualityEstimate,
    Result,
    ShadowBatch,
    VersionDrift,
)

MAX_MODELS = 10_000  # snapshots kept; beyond, new models are not tracked (their metrics still are)


class _ModelView:
    def __init__(self, model: str) -> None:
        self.model = model
        self.status: ModelStatus | None = None
        self.drift: dict[str, DriftWindow] = {}
        self.drift_counts: dict[str, list[int]] = {}  # detector -> [evaluated, drifted]
        self.outliers: dict[str, dict[str, Any]] = {}
        self.quality_instances = 0
        self.quality: dict[str, dict[str, int]] = {}
        self.analysed = 0
        self.decode_errors: dict[str, dict[str, int]] = {}
        self.errors = 0
        self.last_error: str | None = None
        self.shadows: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, VersionDrift] = {}
        self.estimate: QualityEstimate | None = None
        self.version_counts: dict[str, list[int]] = {}
        self.updated = time.time()


class MonitorStore:
    """Thread-safe store of the latest analysis results per model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelView] = {}

    def _view(self, model: str) -> _ModelView | None:
        view = self._models.get(model)
        if view is None and len(self._models) < MAX_MODELS:
            view = self._models[model] = _ModelView(model)
        if view is not None:
            view.updated = time.time()
        return view

    def apply(self, result: Result) -> None:
        with self._lock:
            if isinstance(result, BatchDone):
                self._batch_done(result)
                return
            model = getattr(result, "model", None)
            if not isinstance(model, str):
                return
            view = self._view(model)
            if view is None:
                return
            if isinstance(result, ModelStatus):
                view.status = result
            elif isinstance(result, DriftWindow):
                view.drift[result.detector] = result
                counts = view.drift_counts.setdefault(result.detector, [0, 0])
                evaluated, drifted = result.counts()
                counts[0] += evaluated
                counts[1] += drifted
            elif isinstance(result, OutlierBatch):
                entry = view.outliers.setdefault(result.detector, {"instances": 0, "outliers": 0})
                entry["instances"] += result.instances
                entry["outliers"] += result.outliers
                entry["threshold"] = result.threshold
                entry["latest_batch"] = {"instances": result.instances, "outliers": result.outliers,
                                         "max_score": result.max_score}
            elif isinstance(result, QualityBatch):
                view.quality_instances += result.instances
                for (feature, issue), count in result.counts.items():
                    issues = view.quality.setdefault(feature, {})
                    issues[issue] = issues.get(issue, 0) + count
            elif isinstance(result, ModelError):
                view.errors += 1
                view.last_error = result.error
            elif isinstance(result, ShadowBatch):
                _add_shadow(view.shadows.setdefault(result.shadow, _new_shadow()), result)
            elif isinstance(result, QualityEstimate):
                view.estimate = result
            elif isinstance(result, VersionDrift):
                view.versions[result.version] = result
                counts = view.version_counts.setdefault(result.version, [0, 0])
                evaluated, drifted = result.counts()
                counts[0] += evaluated
                counts[1] += drifted

    def _batch_done(self, done: BatchDone) -> None:
        for (model, protocol, reason), count in done.decode_errors.items():
            view = self._view(model)
            if view is not None:
                per_protocol = view.decode_errors.setdefault(protocol, {})
                per_protocol[reason] = per_protocol.get(reason, 0) + count
        for model, count in done.analysed.items():
            view = self._view(model)
            if view is not None:
                view.analysed += count

    def forget_windows(self, model: str) -> None:
        """Drop the drift and outlier results of a model whose reference is being rebuilt."""
        with self._lock:
            view = self._models.get(model)
            if view is not None:
                view.drift.clear()
                view.drift_counts.clear()
                view.outliers.clear()

    def knows(self, model: str) -> bool:
        with self._lock:
            return model in self._models

    def list_models(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def snapshot(self, model: str, extremes: bool = False) -> dict[str, Any] | None:
        """The model's drill-down; feature summaries leave out `min` and `max` (single raw input values) unless
        `extremes`."""
        with self._lock:
            view = self._models.get(model)
            return None if view is None else _render(view, extremes)


def _render(view: _ModelView, extremes: bool) -> dict[str, Any]:
    status = view.status
    snapshot: dict[str, Any] = {
        "model": view.model,
        "task": status.task if status else None,
        "worker": status.worker if status else None,
        "updated": view.updated,
        "reference": status.reference._asdict() if status else None,
        "windows": dict(status.windows) if status else None,
        "features": {"inputs": list(status.inputs), "outputs": list(status.outputs),
                     "columns": status.input_columns} if status else None,
        "decisions": status.decisions if status else None,
        "detectors": {name: _render_drift(window, view.drift_counts.get(name, [0, 0]), extremes)
                      for name, window in sorted(view.drift.items())},
        "outliers": {name: dict(entry) for name, entry in sorted(view.outliers.items())},
        "data_quality": {"instances": view.quality_instances,
                    "issues": {feature: dict(issues) for feature, issues in sorted(view.quality.items())}},
        "analysed_instances": view.analysed,
        "decode_errors": {protocol: dict(reasons) for protocol, reasons in view.decode_errors.items()},
        "errors": {"count": view.errors, "last": view.last_error},
    }
    if view.estimate is not None:
        snapshot["estimated_quality"] = _render_estimate(view.estimate)
    if view.shadows:
        snapshot["shadows"] = {name: _render_shadow(entry) for name, entry in sorted(view.shadows.items())}
    if view.versions:
        snapshot["versions"] = {name: {"baseline": result.baseline, "baseline_source": result.baseline_source,
                                       "instances": result.instances, "p_value": result.p_value,
                                       "drift": result.drift, "threshold": result.threshold,
                                       "windows_evaluated": view.version_counts[name][0],
                                       "windows_drifted": view.version_counts[name][1],
                                       "features": list(result.features)}
                                for name, result in sorted(view.versions.items())}
    return snapshot


def _render_estimate(estimate: QualityEstimate) -> dict[str, Any]:
    calibration = ("assumed: the model's probabilities are taken as calibrated until enough labels arrive"
                   if estimate.calibration == "assumed" else
                   f"isotonic on {estimate.calibration_pairs} labelled instances")
    return {"window": estimate.window, "instances": estimate.instances, "accuracy": estimate.accuracy,
            "precision": estimate.precision, "recall": estimate.recall, "f1": estimate.f1,
            "calibration": estimate.calibration, "calibration_note": calibration,
            "labelled_pairs": estimate.calibration_pairs, "classes": dict(estimate.classes),
            "compared_with_labels": list(estimate.compared)}


def _new_shadow() -> dict[str, Any]:
    return {"task": None, "pairs": 0, "agreed": 0, "unmatched": 0, "confusion": {}, "abs_diff": [0, 0.0],
            "rel_diff": [0, 0.0], "abs_buckets": None, "rel_buckets": None, "agreement_recent": None, "recent": 0,
            "drift": None, "drift_windows": 0, "drifted": 0, "classes": FeatureLabels(MAX_CLASS_LABELS)}


def _add_shadow(entry: dict[str, Any], batch: ShadowBatch) -> None:
    entry["task"] = batch.task
    entry["pairs"] += batch.pairs
    entry["agreed"] += batch.agreed
    entry["unmatched"] += batch.unmatched
    classes = entry["classes"]  # the first MAX_CLASS_LABELS keep their name, as in sidecar_shadow_confusion_total
    for (first, second), count in batch.confusion.items():
        row = entry["confusion"].setdefault(classes("", first), {})
        second = classes("", second)
        row[second] = row.get(second, 0) + count
    for key, counted in (("abs", batch.abs_diff), ("rel", batch.rel_diff)):
        total = entry[f"{key}_diff"]
        total[0] += sum(counted.counts)
        total[1] += counted.total
        buckets = entry[f"{key}_buckets"]
        entry[f"{key}_buckets"] = list(counted.counts) if buckets is None else [
            a + b for a, b in zip(buckets, counted.counts, strict=True)]
    if batch.agreement is not None:
        entry["agreement_recent"], entry["recent"] = batch.agreement, batch.recent
    if batch.drift is not None:
        entry["drift"] = batch.drift
    entry["drift_windows"] += batch.drift_windows
    entry["drifted"] += batch.drifted


def _render_shadow(entry: dict[str, Any]) -> dict[str, Any]:
    rendered: dict[str, Any] = {"task": entry["task"], "compared_instances": entry["pairs"],
                                "unmatched_instances": entry["unmatched"]}
    if entry["task"] == "classification":
        rendered["agreement"] = entry["agreed"] / entry["pairs"] if entry["pairs"] else None
        rendered["agreement_recent"] = {"value": entry["agreement_recent"], "instances": entry["recent"]}
        rendered["confusion"] = {"rows": "primary class", "columns": "shadow class",
                                 "counts": {first: dict(row) for first, row in sorted(entry["confusion"].items())}}
    elif entry["task"] == "regression":
        bounds = [*(str(bound) for bound in DIFF_BUCKETS), "+Inf"]
        for key, name in (("abs", "absolute_difference"), ("rel", "relative_difference")):
            count, total = entry[f"{key}_diff"]
            rendered[name] = {"mean": total / count if count else None,
                              "buckets": dict(zip(bounds, entry[f"{key}_buckets"] or [0] * len(bounds),
                                                  strict=True))}
    rendered["output_drift"] = {"latest": entry["drift"], "windows_evaluated": entry["drift_windows"],
                                "windows_drifted": entry["drifted"]}
    return rendered


def _render_drift(window: DriftWindow, counts: list[int], extremes: bool) -> dict[str, Any]:
    return {
        "window": dict(window.window),
        "drift": window.drift,
        "p_value": window.p_value,
        "threshold": window.threshold,
        "distance": window.distance,
        "windows_evaluated": counts[0],
        "windows_drifted": counts[1],
        "duration_seconds": window.duration,
        "features": [_feature(item._asdict(), extremes) for item in window.features.all()],
    }


_EXTREMES = ("min", "max")


def _feature(entry: dict[str, Any], extremes: bool) -> dict[str, Any]:
    if not extremes:
        for side in ("reference", "current"):
            summary = entry.get(side)
            if isinstance(summary, dict) and "min" in summary:
                entry[side] = {key: value for key, value in summary.items() if key not in _EXTREMES}
    return entry
