"""Results a worker holds between sends: merged per model and detector, nothing counted twice or lost."""

from __future__ import annotations

import pytest

from sidecar.messages.results import (
    LAG_BUCKETS,
    SCORE_BUCKETS,
    BatchDone,
    DriftWindow,
    ModelError,
    ModelStatus,
    OutlierBatch,
    PackedFeatures,
    PredictionDetails,
    QualityBatch,
    ReferenceStatus,
    StoredPredictions,
    bucket_counts,
)
from sidecar.worker.coalesce import ResultBuffer


def window(model: str, index: int, drift: bool, detector: str = "feature_drift") -> DriftWindow:
    return DriftWindow(model, detector, {"index": index, "instances": 50, "start": 1.0, "end": 2.0}, drift,
                       0.01 if drift else 0.5, 0.05, None, PackedFeatures.of([], 0), 0.001 * index)


def status(model: str, instances: int) -> ModelStatus:
    reference = ReferenceStatus("traffic", None, instances, 100, instances >= 100, None, False, None)
    return ModelStatus(model, 0, "classification", reference, {"mode": "tumbling"}, ["x[0]"], ["p[0]"], 0)


def test_drift_windows_merge_into_the_latest_with_the_counts_of_all() -> None:
    buffer = ResultBuffer()
    buffer.extend([window("m", 1, True), window("m", 2, False), window("m", 3, True), window("m", 4, False)])
    [merged] = buffer.take()
    assert isinstance(merged, DriftWindow)
    assert merged.window["index"] == 4 and merged.drift is False and merged.p_value == 0.5
    assert merged.counts() == (4, 2)


def test_a_single_window_counts_itself() -> None:
    assert window("m", 1, True).counts() == (1, 1)
    assert window("m", 1, False).counts() == (1, 0)


def test_models_and_detectors_are_kept_apart() -> None:
    buffer = ResultBuffer()
    buffer.extend([window("a", 1, True), window("b", 1, False), window("a", 2, False, detector="mmd"),
                   window("a", 3, False)])
    taken = buffer.take()
    assert [(r.model, r.detector, r.counts()) for r in taken if isinstance(r, DriftWindow)] == [
        ("a", "feature_drift", (2, 1)), ("b", "feature_drift", (1, 0)), ("a", "mmd", (1, 0))]


def test_outlier_counts_and_score_buckets_add_up_and_the_largest_score_is_kept() -> None:
    buffer = ResultBuffer()
    buffer.add(OutlierBatch("m", "mahalanobis", 800, 8, 3.0, bucket_counts([1.0] * 800, SCORE_BUCKETS), 1.0, 0.002))
    buffer.add(OutlierBatch("m", "mahalanobis", 700, 3, 3.5, bucket_counts([2.0] * 700, SCORE_BUCKETS), 2.0, 0.004))
    buffer.add(OutlierBatch("m", "mahalanobis", 0, 0, 3.5, bucket_counts([], SCORE_BUCKETS), None, 0.005))
    [merged] = buffer.take()
    assert isinstance(merged, OutlierBatch)
    assert (merged.instances, merged.outliers, merged.threshold, merged.duration) == (1500, 11, 3.5, 0.005)
    assert merged.scores == bucket_counts([1.0] * 800 + [2.0] * 700, SCORE_BUCKETS)
    assert merged.max_score == 2.0


def test_quality_counts_add_up_per_feature_and_issue() -> None:
    buffer = ResultBuffer()
    buffer.add(QualityBatch("m", 10, {("x[0]", "nan"): 2}, 0.001))
    buffer.add(QualityBatch("m", 5, {("x[0]", "nan"): 1, ("x[1]", "inf"): 4}, 0.002))
    [merged] = buffer.take()
    assert isinstance(merged, QualityBatch)
    assert merged.instances == 15 and merged.counts == {("x[0]", "nan"): 3, ("x[1]", "inf"): 4}


def stored(model: str, ids: list[str]) -> StoredPredictions:
    return StoredPredictions(model, ids, [0] * len(ids), ["binary"] * len(ids), ["1"] * len(ids))


def test_stored_predictions_are_concatenated_per_model() -> None:
    buffer = ResultBuffer()
    buffer.extend([stored("m", ["p1"]), stored("other", ["q1"]), stored("m", ["p2", "p3"])])
    merged = {r.model: r for r in buffer.take() if isinstance(r, StoredPredictions)}
    assert merged["m"].ids == ["p1", "p2", "p3"] and merged["m"].values == ["1", "1", "1"]
    assert merged["other"].ids == ["q1"]


def test_details_stay_row_aligned_when_predictions_are_merged_and_cut() -> None:
    first = stored("m", ["p1", "p1"])._replace(details=PredictionDetails(["1", "1"], ["M", "m"], ["a", ""],
                                                                         {"mahalanobis": [9.0, 1.0]}))
    second = stored("m", ["p2"])._replace(details=PredictionDetails([""], ["a"], ["n"], {"autoencoder": [0.5]}))
    buffer = ResultBuffer()
    buffer.extend([first, stored("m", ["p3"]), second])
    [merged] = buffer.take()
    assert isinstance(merged, StoredPredictions) and merged.details is not None
    details = merged.details
    assert (details.versions, details.outliers, details.issues) == (["1", "1", "", ""], ["M", "m", None, "a"],
                                                                    ["a", "", None, "n"])
    assert details.scores["mahalanobis"][:2] == [9.0, 1.0] and all(v != v for v in details.scores["mahalanobis"][2:])
    assert [v != v for v in details.scores["autoencoder"]] == [True, True, True, False]
    buffer.add(merged)
    parts = buffer.take_parts(items=2)
    pieces = [piece for part in parts for piece in part if isinstance(piece, StoredPredictions)]
    assert [piece.ids for piece in pieces] == [["p1", "p1"], ["p3", "p2"]]
    assert pieces[1].details is not None and pieces[1].details.outliers == [None, "a"]
    assert [len(column) for column in pieces[1].details.scores.values()] == [2, 2]
    assert pieces[1].details.scores["autoencoder"][1] == 0.5


def test_the_latest_status_wins_and_every_error_is_kept() -> None:
    buffer = ResultBuffer()
    buffer.extend([status("m", 10), ModelError("m", "first"), status("m", 60), ModelError("m", "second")])
    assert len(buffer) == 3
    taken = buffer.take()
    assert [r.reference.instances for r in taken if isinstance(r, ModelStatus)] == [60]
    assert [r.error for r in taken if isinstance(r, ModelError)] == ["first", "second"]
    assert len(buffer) == 0 and buffer.take() == []


def test_batch_done_is_never_held() -> None:
    with pytest.raises(ValueError, match="BatchDone"):
        ResultBuffer().add(BatchDone(0, 0, 1, 1, bucket_counts([], LAG_BUCKETS), {}, {}))
