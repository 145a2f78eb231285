"""The feedback part of the drill-down `GET /v1/monitor/{model}`: windowed quality and the confusion matrix."""

from __future__ import annotations

from typing import Any

from sidecar.feedback.quality import OTHER_CLASSES, ClassScores, ModelQuality


def quality_snapshot(quality: ModelQuality, outcomes: dict[str, int]) -> dict[str, Any]:
    """A JSON-ready view of one model's quality. `outcomes` are its feedback counts by outcome."""
    snapshot: dict[str, Any] = {
        "task": quality.task,
        "window_size": quality.window,
        "joined_total": quality.joined,
        "feedback": dict(outcomes),
    }
    if quality.is_regression:
        report = quality.regression.report()
        snapshot.update(window_instances=report.instances, rmse=report.rmse, mae=report.mae,
                        abs_error_sum_total=quality.abs_error_sum,
                        squared_error_sum_total=quality.squared_error_sum)
        return snapshot
    classes = quality.classification.report()
    snapshot.update(
        window_instances=classes.instances,
        accuracy=classes.accuracy,
        correct_total=quality.correct,
        macro=_scores(classes.macro, with_support=False),
        classes={label: _scores(scores) for label, scores in classes.classes.items()},
        confusion=_window_confusion(quality),
    )
    return snapshot


def _scores(scores: ClassScores, with_support: bool = True) -> dict[str, float]:
    out: dict[str, float] = {"precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
                             "specificity": scores.specificity}
    if with_support:
        out["support"] = scores.support
    return out


def _window_confusion(quality: ModelQuality) -> dict[str, Any]:
    """The window's confusion matrix: rows are true classes, columns predicted ones (scikit-learn's layout).

    Classes beyond the model's class label cap are summed into one `__other__` row and column.
    """
    window = quality.classification
    own = [label for label in window.labels() if quality.class_labels.has_own(label)]
    labels = own + ([OTHER_CLASSES] if len(own) < len(window.labels()) else [])
    index = {label: position for position, label in enumerate(labels)}
    other = index.get(OTHER_CLASSES)
    matrix = [[0] * len(labels) for _ in labels]
    for (truth, predicted), count in window.confusion.items():
        row = index.get(truth, other)
        column = index.get(predicted, other)
        if row is not None and column is not None:
            matrix[row][column] += count
    return {"labels": labels, "matrix": matrix}
