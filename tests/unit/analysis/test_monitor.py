"""The monitor drill-down: the latest window per detector, reference progress, outliers and quality per model."""

from __future__ import annotations

import json

from sidecar.analysis.metrics import MAX_CLASS_LABELS
from sidecar.analysis.monitor import MonitorStore
from sidecar.messages.results import (
    DIFF_BUCKETS,
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
    ShadowBatch,
    bucket_counts,
)


def status(instances: int, complete: bool) -> ModelStatus:
    return ModelStatus("iris", 0, "classification",
                       ReferenceStatus("traffic", None, instances, 100, complete, "state/models/iris/reference.npz"
                                       if complete else None, False, None),
                       {"mode": "tumbling", "size": 50, "step": 50, "evaluated": 1}, ["x[0]", "x[1]"],
                       ["predicted_class"], 0)


def drift(number: int, drifted: bool) -> DriftWindow:
    stat = FeatureStat("x[0]", "numeric", 0.4, 0.001, 0.002, 1.3, True, {"mean": 0.0}, {"mean": 2.0})
    return DriftWindow("iris", "feature_drift", {"index": number, "instances": 50, "start": 1.0, "end": 2.0},
                       drifted, 0.002, 0.05, None, PackedFeatures.of([stat], 20), 0.01)


def test_an_unknown_model_has_no_snapshot() -> None:
    store = MonitorStore()
    assert store.snapshot("iris") is None
    assert store.list_models() == []


def test_a_snapshot_holds_reference_windows_detectors_outliers_and_quality() -> None:
    store = MonitorStore()
    store.apply(status(40, False))
    store.apply(status(100, True))
    store.apply(drift(0, True))
    store.apply(drift(1, False))
    store.apply(OutlierBatch("iris", "mahalanobis", 10, 1, 4.2, bucket_counts([1.0, 5.0], SCORE_BUCKETS), 5.0, 0.001))
    store.apply(OutlierBatch("iris", "mahalanobis", 5, 2, 4.2, bucket_counts([6.0], SCORE_BUCKETS), 6.0, 0.001))
    store.apply(QualityBatch("iris", 15, {("x[0]", "nan"): 2, ("x", "shape"): 3}, 0.0))
    store.apply(QualityBatch("iris", 5, {("x[0]", "nan"): 1}, 0.0))
    store.apply(BatchDone(0, 1, 3, 2, bucket_counts([0.1], LAG_BUCKETS), {("iris", "grpc", "protobuf"): 1},
                          {"iris": 20}))
    store.apply(ModelError("iris", "output_drift: ValueError: bad"))
    snapshot = store.snapshot("iris")
    assert snapshot is not None
    json.dumps(snapshot, allow_nan=False)
    assert store.list_models() == ["iris"]
    assert snapshot["task"] == "classification"
    assert snapshot["reference"]["complete"] is True
    assert snapshot["reference"]["instances"] == 100
    assert snapshot["windows"]["mode"] == "tumbling"
    detector = snapshot["detectors"]["feature_drift"]
    assert detector["window"]["index"] == 1
    assert (detector["windows_evaluated"], detector["windows_drifted"]) == (2, 1)
    [stat] = detector["features"]
    assert stat["adjusted_p_value"] == 0.002
    assert stat["reference"] == {"mean": 0.0} and stat["current"] == {"mean": 2.0}
    outliers = snapshot["outliers"]["mahalanobis"]
    assert (outliers["instances"], outliers["outliers"], outliers["threshold"]) == (15, 3, 4.2)
    assert outliers["latest_batch"] == {"instances": 5, "outliers": 2, "max_score": 6.0}
    assert snapshot["data_quality"] == {"instances": 20, "issues": {"x": {"shape": 3}, "x[0]": {"nan": 3}}}
    assert snapshot["analysed_instances"] == 20
    assert snapshot["decode_errors"] == {"grpc": {"protobuf": 1}}
    assert snapshot["errors"] == {"count": 1, "last": "output_drift: ValueError: bad"}


def test_a_model_seen_only_through_decode_errors_is_listed() -> None:
    store = MonitorStore()
    store.apply(BatchDone(0, 1, 3, 2, bucket_counts([], LAG_BUCKETS), {("broken", "rest", "json"): 2}, {}))
    snapshot = store.snapshot("broken")
    assert snapshot is not None
    assert snapshot["reference"] is None
    assert snapshot["decode_errors"] == {"rest": {"json": 2}}


def test_feature_summaries_leave_out_single_raw_values_unless_asked() -> None:
    store = MonitorStore()
    summary = {"count": 100.0, "mean": 0.0, "min": -9.5, "max": 12.25, "p05": -1.6, "p50": 0.0, "p95": 1.7}
    stat = FeatureStat("x[0]", "numeric", 0.4, 0.001, 0.002, 1.3, True, summary, dict(summary))
    store.apply(DriftWindow("iris", "feature_drift", {"index": 1}, True, 0.002, 0.05, None,
                            PackedFeatures.of([stat], 20), 0.01))
    shown = store.snapshot("iris")
    assert shown is not None
    [feature] = shown["detectors"]["feature_drift"]["features"]
    assert set(feature["reference"]) == set(feature["current"]) == {"count", "mean", "p05", "p50", "p95"}
    asked = store.snapshot("iris", extremes=True)
    assert asked is not None
    assert asked["detectors"]["feature_drift"]["features"][0]["reference"]["max"] == 12.25


def test_a_shadows_confusion_keeps_as_many_classes_as_its_metric_and_folds_the_rest() -> None:
    store = MonitorStore()
    classes = [str(number) for number in range(3 * MAX_CLASS_LABELS)]
    confusion = {(first, second): 1 for first in classes for second in classes}
    empty = bucket_counts([], DIFF_BUCKETS)
    store.apply(ShadowBatch("iris", "next", "classification", len(confusion), len(classes), 0, confusion, empty,
                            empty, None, 0))
    snapshot = store.snapshot("iris")
    assert snapshot is not None
    counts = snapshot["shadows"]["next"]["confusion"]["counts"]
    assert len(counts) == MAX_CLASS_LABELS + 1 and all(len(row) == MAX_CLASS_LABELS + 1 for row in counts.values())
    assert "__other__" in counts and sum(sum(row.values()) for row in counts.values()) == len(confusion)
