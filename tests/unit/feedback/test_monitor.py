"""The drill-down's quality section: windowed scores and scikit-learn's confusion matrix layout."""

from __future__ import annotations

import json
import random

from sklearn.metrics import confusion_matrix

from sidecar.feedback.monitor import quality_snapshot
from sidecar.feedback.quality import ModelQuality


def test_the_confusion_matrix_has_true_rows_and_predicted_columns_like_sklearn() -> None:
    rng = random.Random(3)
    quality = ModelQuality(window=50, class_cap=10)
    pairs = [(str(rng.randrange(4)), str(rng.randrange(4))) for _ in range(80)]
    for truth, predicted in pairs:
        quality.add_classification("multiclass", truth, predicted)
    snapshot = quality_snapshot(quality, {"joined": 80})
    recent = pairs[-50:]
    labels = snapshot["confusion"]["labels"]
    expected = confusion_matrix([t for t, _ in recent], [p for _, p in recent], labels=labels)
    assert snapshot["confusion"]["matrix"] == expected.tolist()
    assert snapshot["window_instances"] == 50 and snapshot["joined_total"] == 80
    assert set(snapshot["classes"]) == set(labels)
    assert snapshot["feedback"] == {"joined": 80}
    json.dumps(snapshot, allow_nan=False)


def test_classes_beyond_the_cap_are_one_other_row_and_column() -> None:
    quality = ModelQuality(window=10, class_cap=2)
    for truth, predicted in [("0", "0"), ("1", "1"), ("2", "3"), ("3", "0")]:
        quality.add_classification("multiclass", truth, predicted)
    confusion = quality_snapshot(quality, {})["confusion"]
    assert confusion == {"labels": ["0", "1", "__other__"], "matrix": [[1, 0, 0], [0, 1, 0], [1, 0, 1]]}


def test_a_regressor_shows_rmse_mae_and_error_totals() -> None:
    quality = ModelQuality(window=10, class_cap=2)
    quality.add_regression(1.0, 2.0)
    quality.add_regression(1.0, 4.0)
    snapshot = quality_snapshot(quality, {"joined": 2})
    assert snapshot["task"] == "regression"
    assert snapshot["mae"] == 2.0
    assert snapshot["rmse"] == 5.0 ** 0.5
    assert snapshot["abs_error_sum_total"] == 4.0 and snapshot["squared_error_sum_total"] == 10.0
    assert "confusion" not in snapshot
