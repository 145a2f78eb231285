"""Prometheus metrics of the analysis stage, updated in the main process from the workers' results.

Label cardinality stays bounded: model names go through `ModelLabels` (the first `model_label_cap` models keep
their name, later ones fold into `__other__`); per-feature drift gauges exist only for the `max_feature_labels`
worst features of the latest window of each model and detector (`feature_gauges`: older label sets disappear),
plus the detector-level series `feature="__all__"`; data-quality counters give the first `max_feature_labels`
features of a model with issues their own label and fold the rest into `__other__`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.analysis.counted_histogram import CountedHistogram
from sidecar.analysis.feature_gauges import ALL_FEATURES, WorstFeatureGauges
from sidecar.messages.results import (
    DIFF_BUCKETS,
    LAG_BUCKETS,
    SCORE_BUCKETS,
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
from sidecar.telemetry.metrics import OTHER_MODELS, ModelLabels

OTHER_FEATURES = "__other__"
MAX_CLASS_LABELS = 20  # classes per model and shadow with their own label in the shadow confusion matrix
DETECTOR_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0)


class FeatureLabels:
    """Per model, the first `cap` feature names keep their own label; later ones share `__other__`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._known: dict[str, set[str]] = {}

    def __call__(self, model: str, feature: str) -> str:
        known = self._known.setdefault(model, set())
        if feature in known:
            return feature
        if len(known) < self.cap:
            known.add(feature)
            return feature
        return OTHER_FEATURES


class AnalysisMetrics:
    """All analysis metrics, registered on the given registry. `apply` is safe from any thread."""

    def __init__(self, registry: CollectorRegistry, max_feature_labels: int, model_label_cap: int = 100) -> None:
        self.models = ModelLabels(model_label_cap)
        self.max_feature_labels = max_feature_labels
        self.quality_features = FeatureLabels(max_feature_labels)
        self._lock = threading.Lock()
        r = registry
        self.decode_errors = Counter("sidecar_decode_errors", "Captured exchanges the analysis could not decode, "
                                     "by reason.", ["model", "protocol", "reason"], registry=r)
        self.reference_instances = Gauge("sidecar_reference_instances", "Instances in the model's reference "
                                         "(collected so far, or read from its file).", ["model"], registry=r)
        self.reference_target = Gauge("sidecar_reference_target_instances", "Instances the reference is complete "
                                      "at.", ["model"], registry=r)
        self.drift_detected = Gauge("sidecar_drift_detected", "1 when the latest evaluated window drifted from the "
                                    "reference, else 0.", ["model", "detector"], registry=r)
        self.drift_checks = Counter("sidecar_drift_checks", "Windows evaluated for drift.", ["model", "detector"],
                                    registry=r)
        self.drift_windows = Counter("sidecar_drift_windows_drifted", "Evaluated windows that drifted.",
                                     ["model", "detector"], registry=r)
        self.worst_features = WorstFeatureGauges(registry=r)
        self.outliers = Counter("sidecar_outliers", "Instances scored as outliers.", ["model", "detector"],
                                registry=r)
        self.outlier_checks = Counter("sidecar_outlier_checked_instances", "Instances scored by outlier detectors.",
                                      ["model", "detector"], registry=r)
        self.outlier_score = CountedHistogram("sidecar_outlier_score", "Outlier scores of analysed instances.",
                                              ["model", "detector"], SCORE_BUCKETS, registry=r)
        self.outlier_threshold = Gauge("sidecar_outlier_threshold", "Score above which an instance is an outlier.",
                                       ["model", "detector"], registry=r)
        self.quality_issues = Counter("sidecar_data_quality_issues", "Instances with a data-quality issue, per "
                                      "feature (or input, for shape/dtype/missing inputs) and issue.",
                                      ["model", "feature", "issue"], registry=r)
        self.lag = CountedHistogram("sidecar_analysis_lag_seconds", "Time from capture to the analysis result.",
                                    [], LAG_BUCKETS, registry=r)
        self.restarts = Counter("sidecar_worker_restarts", "Analysis worker processes restarted after they died.",
                                ["worker"], registry=r)
        self.lost_records = Counter("sidecar_analysis_lost_records", "Records handed to the analysis but never "
                                    "analysed (reason: worker_died: in flight to a worker that died; shutdown: "
                                    "waiting when the pool stopped).",
                                    ["worker", "reason"], registry=r)
        self.detector_duration = Histogram("sidecar_detector_duration_seconds", "Time one detector run took (the "
                                           "latest run per model in each result a worker sends).",
                                           ["detector"], buckets=DETECTOR_BUCKETS, registry=r)
        self.analysed = Counter("sidecar_analysed_instances", "Instances analysed (decoded and turned into "
                                "features).", ["model"], registry=r)
        self.errors = Counter("sidecar_analysis_errors", "Unexpected failures while analysing a model's batch.",
                              ["model"], registry=r)
        self.detector_active = Gauge("sidecar_detector_active", "1 when the detector runs for the model, 0 when it "
                                     "was not built (the reason is in /v1/monitor/{model} under decisions).",
                                     ["model", "detector"], registry=r)
        self.input_columns = Gauge("sidecar_input_columns", "Input feature columns of the model by the kind the "
                                   "analysis gave them (numeric, categorical, excluded) and where the kind came "
                                   "from (signature, data, config).", ["model", "kind", "source"], registry=r)
        self.signature = Gauge("sidecar_model_signature", "1 for where the model's input and output types came "
                               "from: the model server's metadata (tfserving rest, v2 grpc, ...) or none (inferred "
                               "from the data).", ["model", "source"], registry=r)
        self.projected = Gauge("sidecar_input_projected", "1 when the model's numeric inputs are wider than "
                               "max_features and analysed through a projection, else 0.", ["model"], registry=r)
        self.reference_excluded = Gauge("sidecar_reference_rows_excluded", "Reference rows left out of the "
                                        "detectors' fit (extreme: beyond the robust range; non_finite: a NaN or "
                                        "infinite numeric value).", ["model", "reason"], registry=r)
        self._decided: dict[str, set[tuple[Gauge, tuple[str, ...]]]] = {}  # model -> decision series set
        self.workers_alive = Gauge("sidecar_analysis_workers_alive", "Analysis worker processes running.",
                                   registry=r)
        self.shadow_pairs = Counter("sidecar_shadow_compared_instances", "Instances answered by both the primary "
                                    "and its shadow, compared.", ["model", "shadow"], registry=r)
        self.shadow_agreed = Counter("sidecar_shadow_agreed_instances", "Compared instances given the same class "
                                     "by the primary and its shadow (classification).", ["model", "shadow"],
                                     registry=r)
        self.shadow_unmatched = Counter("sidecar_shadow_unmatched_instances", "Shadow answers that could not be "
                                        "compared with the primary's (instance counts or output shapes differ).",
                                        ["model", "shadow"], registry=r)
        self.shadow_agreement = Gauge("sidecar_shadow_agreement", "Share of the latest window_size compared "
                                      "instances given the same class by the primary and its shadow.",
                                      ["model", "shadow"], registry=r)
        self.shadow_confusion = Counter("sidecar_shadow_confusion", "Compared instances by the primary's class and "
                                        "the shadow's (classes beyond 20 per model fold into __other__).",
                                        ["model", "shadow", "primary_class", "shadow_class"], registry=r)
        self.shadow_abs_diff = CountedHistogram("sidecar_shadow_absolute_difference", "|shadow - primary| per "
                                                "compared instance (regression).", ["model", "shadow"], DIFF_BUCKETS,
                                                registry=r)
        self.shadow_rel_diff = CountedHistogram("sidecar_shadow_relative_difference", "|shadow - primary| / "
                                                "|primary| per compared instance (regression).", ["model", "shadow"],
                                                DIFF_BUCKETS, registry=r)
        self.shadow_drift = Gauge("sidecar_shadow_output_drift_detected", "1 when the shadow's outputs drifted from "
                                  "the primary's on the same inputs in the latest paired window, else 0.",
                                  ["model", "shadow"], registry=r)
        self.shadow_drift_p = Gauge("sidecar_shadow_output_drift_p_value", "p-value of the latest paired window's "
                                    "output drift test (shadow against primary).", ["model", "shadow"], registry=r)
        self.version_drift = Gauge("sidecar_version_output_drift_detected", "1 when a version's latest outputs "
                                   "drifted from its baseline version's, else 0.", ["model", "version", "baseline"],
                                   registry=r)
        self.version_drift_p = Gauge("sidecar_version_output_drift_p_value", "p-value of a version's latest outputs "
                                     "tested against its baseline version's.", ["model", "version", "baseline"],
                                     registry=r)
        self.version_checks = Counter("sidecar_version_output_drift_checks", "Version output windows tested "
                                      "against the baseline.", ["model", "version"], registry=r)
        self.estimated = {name: Gauge(f"sidecar_quality_estimated_{name}", f"The {name} expected from the "
                                      "classifier's probabilities over its latest window, before labels (CBPE; "
                                      "precision, recall and F1 macro-averaged).", ["model"], registry=r)
                          for name in ("accuracy", "precision", "recall", "f1")}
        self.estimate_calibrated = Gauge("sidecar_quality_estimation_calibrated", "1 when the quality estimate "
                                         "calibrates the probabilities on joined labels (isotonic), 0 when it "
                                         "assumes them calibrated (too few labels yet).", ["model"], registry=r)
        self.estimate_gap = Gauge("sidecar_quality_estimated_accuracy_error", "Estimated minus realized accuracy "
                                  "over the labelled instances of the model's recent windows.", ["model"],
                                  registry=r)
        self.shadow_classes = FeatureLabels(MAX_CLASS_LABELS)
        self._baselines: dict[tuple[str, str], str] = {}

    def apply(self, result: Result) -> None:
        if isinstance(result, BatchDone):
            self._batch_done(result)
        elif isinstance(result, ModelStatus):
            model = self.models(result.model)
            self.reference_instances.labels(model).set(result.reference.instances)
            self.reference_target.labels(model).set(result.reference.target)
            if result.decisions is not None:
                self._decisions(model, result.decisions)
        elif isinstance(result, DriftWindow):
            self._drift(result)
        elif isinstance(result, OutlierBatch):
            self._outliers(result)
        elif isinstance(result, QualityBatch):
            self._quality(result)
        elif isinstance(result, ModelError):
            self.errors.labels(self.models(result.model)).inc()
        elif isinstance(result, ShadowBatch):
            self._shadow(result)
        elif isinstance(result, VersionDrift):
            self._version(result)
        elif isinstance(result, QualityEstimate):
            self._estimate(result)

    def _estimate(self, estimate: QualityEstimate) -> None:
        model = self.models(estimate.model)
        for name in ("accuracy", "precision", "recall", "f1"):
            value = getattr(estimate, name)
            if value == value:
                self.estimated[name].labels(model).set(value)
        self.estimate_calibrated.labels(model).set(1 if estimate.calibration != "assumed" else 0)
        labelled = sum(entry["labelled"] for entry in estimate.compared)
        if labelled:
            expected = sum(entry["estimated_accuracy_labelled"] * entry["labelled"] for entry in estimate.compared)
            realized = sum(entry["realized_accuracy"] * entry["labelled"] for entry in estimate.compared)
            self.estimate_gap.labels(model).set((expected - realized) / labelled)

    def _shadow(self, batch: ShadowBatch) -> None:
        model, shadow = self.models(batch.model), batch.shadow
        if batch.pairs:
            self.shadow_pairs.labels(model, shadow).inc(batch.pairs)
        if batch.unmatched:
            self.shadow_unmatched.labels(model, shadow).inc(batch.unmatched)
        if batch.agreement is not None:
            self.shadow_agreed.labels(model, shadow).inc(batch.agreed)
            self.shadow_agreement.labels(model, shadow).set(batch.agreement)
        with self._lock:
            confusion = [(self.shadow_classes(f"{model}~{shadow}", first),
                          self.shadow_classes(f"{model}~{shadow}", second), count)
                         for (first, second), count in batch.confusion.items()]
        for first, second, count in confusion:
            self.shadow_confusion.labels(model, shadow, first, second).inc(count)
        if batch.task == "regression":
            self.shadow_abs_diff.add((model, shadow), batch.abs_diff)
            self.shadow_rel_diff.add((model, shadow), batch.rel_diff)
        if batch.drift is not None:
            self.shadow_drift.labels(model, shadow).set(1 if batch.drift["drift"] else 0)
            self.shadow_drift_p.labels(model, shadow).set(batch.drift["p_value"])

    def _version(self, result: VersionDrift) -> None:
        model, version = self.models(result.model), result.version
        previous = self._baselines.get((model, version))
        if previous is not None and previous != result.baseline:  # the baseline changed: its old series goes
            for gauge in (self.version_drift, self.version_drift_p):
                with contextlib.suppress(KeyError):
                    gauge.remove(model, version, previous)
        self._baselines[(model, version)] = result.baseline
        self.version_drift.labels(model, version, result.baseline).set(1 if result.drift else 0)
        self.version_drift_p.labels(model, version, result.baseline).set(result.p_value)
        self.version_checks.labels(model, version).inc(result.counts()[0])

    def _decisions(self, model: str, decisions: dict[str, Any]) -> None:
        series = self._decided.setdefault(model, set())
        for detector, entry in decisions.get("detectors", {}).items():
            self.detector_active.labels(model, detector).set(1 if entry.get("active") else 0)
            series.add((self.detector_active, (model, detector)))
        for entry in decisions.get("columns", []):
            self.input_columns.labels(model, entry["kind"], entry["source"]).set(entry["count"])
            series.add((self.input_columns, (model, entry["kind"], entry["source"])))
        source = decisions.get("signature", {}).get("source") or "none"
        self.signature.labels(model, source).set(1)
        series.add((self.signature, (model, source)))
        self.projected.labels(model).set(1 if decisions.get("layout", {}).get("mode") == "projected" else 0)
        series.add((self.projected, (model,)))
        for reason, count in decisions.get("reference_rows_excluded", {}).items():
            self.reference_excluded.labels(model, reason).set(count)
            series.add((self.reference_excluded, (model, reason)))

    def forget_decisions(self, model: str) -> None:
        """Drop a model's decision series (its reference is being rebuilt; new ones come with the new reference)."""
        for gauge, labels in self._decided.pop(self.models(model), set()):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def _batch_done(self, done: BatchDone) -> None:
        for (model, protocol, reason), count in done.decode_errors.items():
            self.decode_errors.labels(self.models(model), protocol, reason).inc(count)
        for model, count in done.analysed.items():
            if count:
                self.analysed.labels(self.models(model)).inc(count)
        self.lag.add((), done.lags)

    def _drift(self, window: DriftWindow) -> None:
        model = self.models(window.model)
        detector = window.detector
        self.drift_detected.labels(model, detector).set(1 if window.drift else 0)
        evaluated, drifted = window.counts()
        self.drift_checks.labels(model, detector).inc(evaluated)
        if drifted:
            self.drift_windows.labels(model, detector).inc(drifted)
        self.detector_duration.labels(detector).observe(window.duration)
        self.worst_features.set(model, detector, window.p_value, window.distance,
                                window.features.worst[:self.max_feature_labels])

    def _outliers(self, batch: OutlierBatch) -> None:
        model = self.models(batch.model)
        self.outlier_checks.labels(model, batch.detector).inc(batch.instances)
        self.outliers.labels(model, batch.detector).inc(batch.outliers)
        self.outlier_threshold.labels(model, batch.detector).set(batch.threshold)
        self.outlier_score.add((model, batch.detector), batch.scores)
        self.detector_duration.labels(batch.detector).observe(batch.duration)

    def _quality(self, batch: QualityBatch) -> None:
        model = self.models(batch.model)
        with self._lock:
            labelled = [(self.quality_features(model, feature), issue, count)
                        for (feature, issue), count in batch.counts.items() if count]
        for feature, issue, count in labelled:
            self.quality_issues.labels(model, feature, issue).inc(count)
        if batch.duration:
            self.detector_duration.labels("quality").observe(batch.duration)

    def worker_restarted(self, worker: int) -> None:
        self.restarts.labels(str(worker)).inc()

    def records_lost(self, worker: int, reason: str, count: int) -> None:
        if count:
            self.lost_records.labels(str(worker), reason).inc(count)


__all__ = ["ALL_FEATURES", "OTHER_FEATURES", "OTHER_MODELS", "AnalysisMetrics", "FeatureLabels"]
