"""Windowed quality equals scikit-learn's metrics (zero_division=0) on the last N instances of random streams."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from sidecar.feedback.quality import (
    OTHER_CLASSES,
    ClassificationWindow,
    ClassLabels,
    ModelQuality,
    RegressionWindow,
    sort_labels,
)


def specificity(truth: list[str], predicted: list[str], labels: list[str]) -> list[float]:
    matrix = confusion_matrix(truth, predicted, labels=labels)
    total = matrix.sum()
    out = []
    for index in range(len(labels)):
        tp = matrix[index, index]
        fp = matrix[:, index].sum() - tp
        fn = matrix[index, :].sum() - tp
        tn = total - tp - fp - fn
        out.append(tn / (tn + fp) if tn + fp else 0.0)
    return out


def check_against_sklearn(window: ClassificationWindow, stream: list[tuple[str, str]]) -> None:
    recent = stream[-window.size:]
    truth = [pair[0] for pair in recent]
    predicted = [pair[1] for pair in recent]
    report = window.report()
    labels = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                     zero_division=0)
    assert report.instances == len(recent)
    assert report.accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert sorted(report.classes) == labels
    spec = specificity(truth, predicted, labels)
    for index, label in enumerate(labels):
        scores = report.classes[label]
        assert scores.precision == pytest.approx(precision[index])
        assert scores.recall == pytest.approx(recall[index])
        assert scores.f1 == pytest.approx(f1[index])
        assert scores.support == support[index]
        assert scores.specificity == pytest.approx(spec[index])
    macro = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    assert report.macro.precision == pytest.approx(macro[0])
    assert report.macro.recall == pytest.approx(macro[1])
    assert report.macro.f1 == pytest.approx(macro[2])
    assert report.macro.specificity == pytest.approx(float(np.mean(spec)))
    expected = confusion_matrix(truth, predicted, labels=labels)
    for row, true_label in enumerate(labels):
        for column, predicted_label in enumerate(labels):
            assert window.confusion.get((true_label, predicted_label), 0) == expected[row, column]


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("classes, size, length", [(2, 50, 400), (5, 100, 1000), (12, 1000, 700), (4, 1, 30)])
def test_classification_window_matches_sklearn_at_every_step_of_a_random_stream(
        classes: int, size: int, length: int) -> None:
    rng = random.Random(classes * 1000 + size)
    window = ClassificationWindow(size)
    stream: list[tuple[str, str]] = []
    for step in range(length):
        truth = str(rng.randrange(classes))
        # a skilled but imperfect model, with some classes never predicted early on
        predicted = truth if rng.random() < 0.6 else str(rng.randrange(max(1, classes - step // 100)))
        window.add(truth, predicted)
        stream.append((truth, predicted))
        if step % 37 == 0 or step == length - 1:
            check_against_sklearn(window, stream)


def test_classes_absent_from_the_truth_get_zero_recall_and_count_in_the_macro_average() -> None:
    window = ClassificationWindow(10)
    for truth, predicted in [("0", "0"), ("0", "2"), ("1", "1")]:
        window.add(truth, predicted)
    report = window.report()
    assert report.classes["2"].precision == 0.0
    assert report.classes["2"].recall == 0.0
    assert report.classes["2"].support == 0
    check_against_sklearn(window, [("0", "0"), ("0", "2"), ("1", "1")])


def test_an_empty_window_reports_zeros() -> None:
    report = ClassificationWindow(5).report()
    assert report.instances == 0
    assert report.accuracy == 0.0
    assert report.classes == {}
    assert RegressionWindow(5).report() == (0, 0.0, 0.0)


@pytest.mark.parametrize("size", [1, 10, 250])
def test_regression_window_matches_sklearn_rmse_and_mae(size: int) -> None:
    rng = random.Random(size)
    window = RegressionWindow(size)
    truths: list[float] = []
    predictions: list[float] = []
    for step in range(3 * size + 17):
        truth = rng.gauss(100.0, 30.0)
        prediction = truth + rng.gauss(0.0, 5.0)
        window.add(truth, prediction)
        truths.append(truth)
        predictions.append(prediction)
        if step % 13 == 0:
            report = window.report()
            recent_t, recent_p = truths[-size:], predictions[-size:]
            assert report.instances == len(recent_t)
            assert report.rmse == pytest.approx(math.sqrt(mean_squared_error(recent_t, recent_p)), rel=1e-9)
            assert report.mae == pytest.approx(mean_absolute_error(recent_t, recent_p), rel=1e-9)


def test_regression_sums_stay_exact_after_huge_errors_leave_the_window() -> None:
    window = RegressionWindow(4)
    window.add(0.0, 1e12)
    for _ in range(8):
        window.add(1.0, 1.5)
    report = window.report()
    assert report.mae == pytest.approx(0.5, rel=1e-12)
    assert report.rmse == pytest.approx(0.5, rel=1e-12)


def test_class_labels_keep_the_first_classes_and_fold_the_rest() -> None:
    labels = ClassLabels(2)
    assert [labels(name) for name in ["a", "b", "c", "a"]] == ["a", "b", OTHER_CLASSES, "a"]
    assert labels.has_own("b") and not labels.has_own("c")


def test_model_quality_counts_cumulative_totals_and_folds_confusion_labels() -> None:
    quality = ModelQuality(window=3, class_cap=2)
    for truth, predicted in [("0", "0"), ("1", "0"), ("2", "2"), ("2", "1")]:
        quality.add_classification("multiclass", truth, predicted)
    assert quality.joined == 4
    assert quality.correct == 2
    assert len(quality.classification) == 3
    assert quality.confusion == {("0", "0"): 1, ("1", "0"): 1, (OTHER_CLASSES, OTHER_CLASSES): 1,
                                 (OTHER_CLASSES, "1"): 1}


def test_a_model_that_turns_into_a_regressor_starts_a_new_window() -> None:
    quality = ModelQuality(window=10, class_cap=5)
    quality.add_classification("binary", "1", "1")
    quality.add_regression(2.0, 3.0)
    assert quality.is_regression
    assert len(quality.classification) == 0
    assert quality.regression.report().mae == 1.0
    assert quality.joined == 2


def test_labels_sort_numerically_when_they_are_indices() -> None:
    assert sort_labels({"10", "9", "cat", "1"}) == ["1", "9", "10", "cat"]
