"""Model quality over the last N joined instances, updated in O(1) per instance (pure Python: main process).

Definitions follow scikit-learn with `zero_division=0`: per class c with tp, fp, fn, tn counted over the window,
precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn), specificity = tn / (tn + fp),
each 0 when its denominator is 0; macro = the unweighted mean over the classes present in the window (as truth or
as prediction), which is scikit-learn's label set when `labels` is not given. RMSE and MAE are plain means of the
window's errors.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple


class ClassScores(NamedTuple):
    precision: float
    recall: float
    f1: float
    specificity: float
    support: int


class ClassificationReport(NamedTuple):
    instances: int
    accuracy: float
    classes: dict[str, ClassScores]
    macro: ClassScores


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _add(counts: dict[str, int], key: str, step: int) -> None:
    value = counts.get(key, 0) + step
    if value:
        counts[key] = value
    else:
        del counts[key]


class ClassificationWindow:
    """Confusion counts of the last `size` (truth, predicted) label pairs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pairs: deque[tuple[str, str]] = deque()
        self.confusion: dict[tuple[str, str], int] = {}
        self.truth_counts: dict[str, int] = {}
        self.predicted_counts: dict[str, int] = {}
        self.correct_counts: dict[str, int] = {}
        self.correct = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, truth: str, predicted: str) -> None:
        self.pairs.append((truth, predicted))
        self._count(truth, predicted, 1)
        if len(self.pairs) > self.size:
            old_truth, old_predicted = self.pairs.popleft()
            self._count(old_truth, old_predicted, -1)

    def _count(self, truth: str, predicted: str, step: int) -> None:
        pair = (truth, predicted)
        value = self.confusion.get(pair, 0) + step
        if value:
            self.confusion[pair] = value
        else:
            del self.confusion[pair]
        _add(self.truth_counts, truth, step)
        _add(self.predicted_counts, predicted, step)
        if truth == predicted:
            _add(self.correct_counts, truth, step)
            self.correct += step

    def labels(self) -> list[str]:
        """Classes present in the window, sorted (numerically when they are all integers)."""
        return sort_labels(set(self.truth_counts) | set(self.predicted_counts))

    def report(self) -> ClassificationReport:
        total = len(self.pairs)
        classes: dict[str, ClassScores] = {}
        for label in self.labels():
            tp = self.correct_counts.get(label, 0)
            support = self.truth_counts.get(label, 0)
            fp = self.predicted_counts.get(label, 0) - tp
            fn = support - tp
            tn = total - tp - fp - fn
            classes[label] = ClassScores(_ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn),
                                         _ratio(tn, tn + fp), support)
        count = len(classes)
        macro = ClassScores(
            _ratio(sum(s.precision for s in classes.values()), count),
            _ratio(sum(s.recall for s in classes.values()), count),
            _ratio(sum(s.f1 for s in classes.values()), count),
            _ratio(sum(s.specificity for s in classes.values()), count),
            total,
        )
        return ClassificationReport(total, _ratio(self.correct, total), classes, macro)


class RegressionReport(NamedTuple):
    instances: int
    rmse: float
    mae: float


class RegressionWindow:
    """Absolute and squared errors of the last `size` (truth, predicted) pairs, with running sums.

    Running sums drift when large and small errors mix; they are recomputed exactly (`math.fsum`) every `size`
    evictions, which keeps the cost O(1) amortised.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.errors: deque[float] = deque()
        self.abs_sum = 0.0
        self.squared_sum = 0.0
        self._evictions = 0

    def __len__(self) -> int:
        return len(self.errors)

    def add(self, truth: float, predicted: float) -> None:
        error = predicted - truth
        self.errors.append(error)
        self.abs_sum += abs(error)
        self.squared_sum += error * error
        if len(self.errors) > self.size:
            old = self.errors.popleft()
            self.abs_sum -= abs(old)
            self.squared_sum -= old * old
            self._evictions += 1
            if self._evictions >= self.size:
                self._evictions = 0
                self.abs_sum = math.fsum(abs(e) for e in self.errors)
                self.squared_sum = math.fsum(e * e for e in self.errors)

    def report(self) -> RegressionReport:
        count = len(self.errors)
        if not count:
            return RegressionReport(0, 0.0, 0.0)
        return RegressionReport(count, math.sqrt(max(self.squared_sum, 0.0) / count), max(self.abs_sum, 0.0) / count)


def sort_labels(labels: set[str] | list[str]) -> list[str]:
    """Integer-looking labels in numeric order, then the others alphabetically."""
    return sorted(labels, key=lambda label: (0, int(label), "") if _is_index(label) else (1, 0, label))


def _is_index(label: str) -> bool:
    return label.isascii() and label.isdigit() and len(label) < 19


OTHER_CLASSES = "__other__"


class ClassLabels:
    """Bounds the `class` label values of one model: the first `cap` classes seen keep their name."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.known: dict[str, None] = {}

    def has_own(self, label: str) -> bool:
        """True when `label` keeps its own name (it was among the first `cap` classes seen)."""
        return label in self.known

    def __call__(self, label: str) -> str:
        if label in self.known:
            return label
        if len(self.known) < self.cap:
            self.known[label] = None
            return label
        return OTHER_CLASSES


class ModelQuality:
    """Everything one model's joined feedback has told us: windowed reports and cumulative totals.

    A model is either a classifier or a regressor; when its joined instances switch kind (a new model version
    behind the same name), the windows start over while the cumulative totals keep counting.
    """

    def __init__(self, window: int, class_cap: int) -> None:
        self.window = window
        self.task = ""
        self.classification = ClassificationWindow(window)
        self.regression = RegressionWindow(window)
        self.class_labels = ClassLabels(class_cap)
        self.joined = 0
        self.correct = 0
        self.abs_error_sum = 0.0
        self.squared_error_sum = 0.0
        self.confusion: dict[tuple[str, str], int] = {}

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    def _switch(self, task: str) -> None:
        kind_changed = (task == "regression") != self.is_regression
        if self.task and kind_changed:
            self.classification = ClassificationWindow(self.window)
            self.regression = RegressionWindow(self.window)
        self.task = task

    def add_classification(self, task: str, truth: str, predicted: str) -> None:
        if task != self.task:
            self._switch(task)
        self.classification.add(truth, predicted)
        self.joined += 1
        if truth == predicted:
            self.correct += 1
        pair = (self.class_labels(truth), self.class_labels(predicted))
        self.confusion[pair] = self.confusion.get(pair, 0) + 1

    def add_regression(self, truth: float, predicted: float) -> None:
        if self.task != "regression":
            self._switch("regression")
        self.regression.add(truth, predicted)
        error = predicted - truth
        self.joined += 1
        self.abs_error_sum += abs(error)
        self.squared_error_sum += error * error
