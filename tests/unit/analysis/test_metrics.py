"""Analysis metrics: applied from worker results in the main process, with bounded label sets."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from sidecar.analysis.metrics import ALL_FEATURES, OTHER_FEATURES, AnalysisMetrics
from sidecar.messages.results import (
    LAG_BUCKETS,
    SCORE_BUCKETS,
    BatchDone,
    DriftWindow,
    FeatureStat,
    ModelError,
    ModelStatus,
    OutlierBatch,
    PackedFeatures,
    QualityBatch,
    ReferenceStatus,
    bucket_counts,
)
from sidecar.telemetry.metrics import OTHER_MODELS
from tests.support.helpers import metric


def feature(name: str, adjusted: float, effect: float = 0.1) -> FeatureStat:
    return FeatureStat(name, "numeric", 0.5, adjusted / 2, adjusted, effect, adjusted < 0.05, {}, {})


def window(model: str, features: list[FeatureStat], drift: bool = True) -> DriftWindow:
    return DriftWindow(model, "feature_drift", {"index": 0, "instances": 50, "start": 1.0, "end": 2.0}, drift,
                       min(f.adjusted_p_value for f in features), 0.05, None, PackedFeatures.of(features, 20), 0.002)


def test_decode_errors_lags_and_analysed_instances_come_from_batch_summaries() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=5)
    lags = bucket_counts([0.01, 0.2], LAG_BUCKETS)
    metrics.apply(BatchDone(0, 1, 7, 3, lags, {("iris", "rest", "json"): 2}, {"iris": 40}))
    assert metric(registry, "sidecar_decode_errors_total", model="iris", protocol="rest", reason="json") == 2
    assert metric(registry, "sidecar_analysed_instances_total", model="iris") == 40
    assert metric(registry, "sidecar_analysis_lag_seconds_count") == 2
    assert metric(registry, "sidecar_analysis_lag_seconds_bucket", le="0.025") == 1
    assert metric(registry, "sidecar_analysis_lag_seconds_sum") == pytest.approx(0.21)


def test_the_reference_gauges_follow_the_model_status() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=5)
    status = ReferenceStatus("traffic", None, 120, 500, False, None, False, None)
    metrics.apply(ModelStatus("iris", 0, None, status, {}, [], [], 0))
    assert metric(registry, "sidecar_reference_instances", model="iris") == 120
    assert metric(registry, "sidecar_reference_target_instances", model="iris") == 500


def test_drift_gauges_cover_only_the_worst_features_of_the_latest_window() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=2)
    metrics.apply(window("iris", [feature("a", 0.001), feature("b", 0.9), feature("c", 0.01)]))
    labels = {"model": "iris", "detector": "feature_drift"}
    assert metric(registry, "sidecar_drift_detected", **labels) == 1
    assert metric(registry, "sidecar_drift_checks_total", **labels) == 1
    assert metric(registry, "sidecar_drift_p_value", feature="a", **labels) == 0.001
    assert metric(registry, "sidecar_drift_p_value", feature="c", **labels) == 0.01
    assert registry.get_sample_value("sidecar_drift_p_value", {"feature": "b", **labels}) is None
    assert metric(registry, "sidecar_drift_p_value", feature=ALL_FEATURES, **labels) == 0.001
    metrics.apply(window("iris", [feature("a", 0.8), feature("b", 0.02), feature("c", 0.5)], drift=False))
    assert registry.get_sample_value("sidecar_drift_detected", labels) == 0  # set to 0, not removed
    assert metric(registry, "sidecar_drift_checks_total", **labels) == 2
    assert metric(registry, "sidecar_drift_p_value", feature="b", **labels) == 0.02
    assert metric(registry, "sidecar_drift_p_value", feature="c", **labels) == 0.5
    # stale label set removed
    assert registry.get_sample_value("sidecar_drift_p_value", {"feature": "a", **labels}) is None
    assert registry.get_sample_value("sidecar_drift_effect_size", {"feature": "a", **labels}) is None


def test_outlier_batches_count_and_fill_the_score_histogram() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=5)
    scores = [1.0, 2.0, 4.0, 9.0] * 300  # every score counts, however many
    metrics.apply(OutlierBatch("iris", "mahalanobis", 10, 2, 3.5, bucket_counts(scores, SCORE_BUCKETS), 9.0, 0.001))
    labels = {"model": "iris", "detector": "mahalanobis"}
    assert metric(registry, "sidecar_outliers_total", **labels) == 2
    assert metric(registry, "sidecar_outlier_checked_instances_total", **labels) == 10
    assert metric(registry, "sidecar_outlier_score_count", **labels) == 1200
    assert metric(registry, "sidecar_outlier_score_bucket", le="2.0", **labels) == 600
    assert metric(registry, "sidecar_outlier_score_sum", **labels) == 4800
    assert metric(registry, "sidecar_outlier_threshold", **labels) == 3.5
    assert metric(registry, "sidecar_detector_duration_seconds_count", detector="mahalanobis") == 1


def test_quality_issue_features_beyond_the_cap_fold_into_other() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=2)
    metrics.apply(QualityBatch("iris", 10, {("a", "nan"): 1, ("b", "inf"): 2, ("c", "nan"): 3, ("d", "shape"): 4},
                               0.0))
    assert metric(registry, "sidecar_data_quality_issues_total", model="iris", feature="a", issue="nan") == 1
    assert metric(registry, "sidecar_data_quality_issues_total", model="iris", feature="b", issue="inf") == 2
    assert metric(registry, "sidecar_data_quality_issues_total", model="iris", feature=OTHER_FEATURES,
                  issue="nan") == 3
    assert metric(registry, "sidecar_data_quality_issues_total", model="iris", feature=OTHER_FEATURES,
                  issue="shape") == 4


def test_model_names_beyond_the_cap_fold_into_other() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=2, model_label_cap=1)
    metrics.apply(ModelError("first", "boom"))
    metrics.apply(ModelError("second", "boom"))
    assert metric(registry, "sidecar_analysis_errors_total", model="first") == 1
    assert metric(registry, "sidecar_analysis_errors_total", model=OTHER_MODELS) == 1


def test_restarts_and_lost_records_are_counted_per_worker() -> None:
    registry = CollectorRegistry()
    metrics = AnalysisMetrics(registry, max_feature_labels=2)
    metrics.worker_restarted(1)
    metrics.records_lost(1, "worker_died", 12)
    metrics.records_lost(1, "worker_died", 0)
    assert metric(registry, "sidecar_worker_restarts_total", worker="1") == 1
    assert metric(registry, "sidecar_analysis_lost_records_total", worker="1", reason="worker_died") == 12
