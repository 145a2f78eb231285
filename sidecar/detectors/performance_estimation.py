"""Confidence-based performance estimation (CBPE): a classifier's expected quality from its own probabilities.

For each instance the predicted class is the most probable one and its confidence c the top probability. A
calibrated c is the probability that the prediction is right, so the expected confusion counts follow without any
label: per class k, expected true positives are the summed confidences of the instances predicted k, false
positives the summed (1 - c) of those, and false negatives the probability the other instances give k, the
remaining mass (1 - c) shared in the proportions of their other probabilities. Accuracy is the mean confidence;
precision, recall and F1 are the ratios of the expected counts, macro-averaged over the classes (as the realized
metrics' `class="macro"`).

When the model is not calibrated, `Calibration` maps confidences to observed hit rates on labelled instances
(isotonic regression by pool-adjacent-violators, top-label), and the estimate uses the mapped confidences.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Calibration(NamedTuple):
    """A monotone map from confidence to hit rate, as knots (`x` increasing, `y` non-decreasing)."""

    x: np.ndarray
    y: np.ndarray
    pairs: int

    def apply(self, confidence: np.ndarray) -> np.ndarray:
        mapped: np.ndarray = np.interp(confidence, self.x, self.y)
        return mapped


def fit_isotonic(confidence: np.ndarray, correct: np.ndarray) -> Calibration:
    """Isotonic regression of `correct` (0/1) on `confidence` by pool-adjacent-violators."""
    order = np.argsort(confidence, kind="stable")
    x = np.asarray(confidence, dtype=np.float64)[order]
    y = np.asarray(correct, dtype=np.float64)[order]
    means: list[float] = []
    weights: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        means.append(yi)
        weights.append(1.0)
        lows.append(xi)
        highs.append(xi)
        while len(means) > 1 and means[-2] >= means[-1]:
            weight = weights[-2] + weights[-1]
            mean = (means[-2] * weights[-2] + means[-1] * weights[-1]) / weight
            high = highs[-1]
            del means[-1], weights[-1], lows[-1], highs[-1]
            means[-1], weights[-1], highs[-1] = mean, weight, high
    knots_x: list[float] = []
    knots_y: list[float] = []
    for low, high, mean in zip(lows, highs, means, strict=True):  # each block is flat between its ends
        knots_x.extend((low, high) if high > low else (low,))
        knots_y.extend((mean, mean) if high > low else (mean,))
    return Calibration(np.array(knots_x), np.array(knots_y), int(x.size))


class Estimate(NamedTuple):
    instances: int
    accuracy: float
    precision: float  # macro
    recall: float  # macro
    f1: float  # macro
    classes: dict[int, dict[str, float]]  # class index -> precision, recall, f1, expected support


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def expected_quality(probabilities: np.ndarray, calibration: Calibration | None = None) -> Estimate:
    """The expected accuracy, precision, recall and F1 of `probabilities` (rows of class probabilities; a single
    column is P(class 1))."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1 or p.shape[1] == 1:
        positive = p.reshape(-1)
        p = np.column_stack([1.0 - positive, positive])
    p = p[np.all(np.isfinite(p), axis=1)]
    n, width = p.shape
    if n == 0:
        return Estimate(0, float("nan"), float("nan"), float("nan"), float("nan"), {})
    predicted = np.argmax(p, axis=1)
    confidence = p[np.arange(n), predicted]
    hit = np.clip(calibration.apply(confidence), 0.0, 1.0) if calibration is not None else confidence
    rest = np.where(confidence < 1.0, 1.0 - confidence, 1.0)
    others = p / rest[:, None] * (1.0 - hit)[:, None]  # P(y = k) for k other than the predicted class
    others[np.arange(n), predicted] = 0.0
    classes: dict[int, dict[str, float]] = {}
    for k in range(width):
        mine = predicted == k
        tp = float(hit[mine].sum())
        fp = float(mine.sum()) - tp
        fn = float(others[:, k].sum())
        if tp + fp + fn <= 0:
            continue
        classes[k] = {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                      "f1": _ratio(2 * tp, 2 * tp + fp + fn), "support": tp + fn}
    def macro(name: str) -> float:
        return float(np.mean([entry[name] for entry in classes.values()])) if classes else float("nan")

    return Estimate(int(n), float(hit.mean()), macro("precision"), macro("recall"), macro("f1"), classes)
