"""Quality before labels: one classifier's expected accuracy, precision, recall and F1 per window (CBPE).

The worker that analyses a model sees its probabilities; the main process joins ground truth as feedback and
sends this worker, per joined instance, whether the prediction was right (`messages.batches.encode_labels`). The
estimator remembers the confidence of its latest instances by (prediction id, instance), so a label that arrives
later pairs with the confidence the model gave: with `min_labels` such pairs the confidences are calibrated
(isotonic, `detectors.performance_estimation`), before that they are assumed calibrated, which the estimate says.
Labels of a recent window's instances also give that window's realized accuracy, set beside its estimate.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any

import numpy as np

from sidecar.detectors.performance_estimation import Calibration, expected_quality, fit_isotonic
from sidecar.messages.results import QualityEstimate

log = logging.getLogger(__name__)
ASSUMED = "assumed"
ISOTONIC = "isotonic"
COMPARED_WINDOWS = 8  # recent windows whose labels are tallied against their estimate


class _WindowTally:
    def __init__(self, index: int, keys: list[tuple[str, int]], hits: np.ndarray, estimate: float) -> None:
        self.index = index
        self.rows = {key: row for row, key in enumerate(keys)}
        self.hits = hits  # the confidences as the estimate used them
        self.estimate = estimate
        self.labelled = 0
        self.correct = 0
        self.expected = 0.0  # the estimate's hit probabilities summed over the labelled instances

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "instances": len(self.rows), "estimated_accuracy": self.estimate,
                "labelled": self.labelled,
                "realized_accuracy": self.correct / self.labelled if self.labelled else None,
                "estimated_accuracy_labelled": self.expected / self.labelled if self.labelled else None}


class QualityEstimator:
    """Windows of `window_size` probability rows of one model, each estimated when complete."""

    def __init__(self, model: str, window_size: int, min_labels: int, calibration_pairs: int,
                 remembered: int) -> None:
        self.model = model
        self.window_size = window_size
        self.min_labels = min_labels
        self.remembered = remembered
        self.confidences: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.pairs: deque[tuple[float, bool]] = deque(maxlen=calibration_pairs)
        self.calibration: Calibration | None = None
        self._rows: list[np.ndarray] = []
        self._keys: list[tuple[str, int]] = []
        self._count = 0
        self.windows = 0
        self.tallies: deque[_WindowTally] = deque(maxlen=COMPARED_WINDOWS)
        self.latest: QualityEstimate | None = None
        self._told: str | None = None
        self.unmatched_labels = 0  # labels whose confidence was no longer remembered

    def add(self, keys: list[tuple[str, int]], probabilities: np.ndarray) -> list[QualityEstimate]:
        """Probability rows (aligned with their (prediction id, instance) keys); estimates of completed windows."""
        width = probabilities.shape[1] if probabilities.ndim == 2 else 1
        confidence = probabilities.max(axis=1) if width > 1 else np.maximum(probabilities.reshape(-1),
                                                                             1.0 - probabilities.reshape(-1))
        for key, value in zip(keys, confidence.tolist(), strict=True):
            self.confidences[key] = value
        while len(self.confidences) > self.remembered:
            self.confidences.popitem(last=False)
        results: list[QualityEstimate] = []
        start = 0
        while start < len(keys):
            take = min(len(keys) - start, self.window_size - self._count)
            self._rows.append(probabilities[start:start + take])
            self._keys.extend(keys[start:start + take])
            self._count += take
            start += take
            if self._count == self.window_size:
                results.append(self._close())
        return results

    def _close(self) -> QualityEstimate:
        rows = np.concatenate(self._rows, axis=0)
        keys = self._keys
        self._rows, self._keys, self._count = [], [], 0
        estimate = expected_quality(rows, self.calibration)
        confidence = rows.max(axis=1) if rows.ndim == 2 and rows.shape[1] > 1 else np.maximum(
            rows.reshape(-1), 1.0 - rows.reshape(-1))
        hits = self.calibration.apply(confidence) if self.calibration is not None else confidence
        self.tallies.append(_WindowTally(self.windows, keys, hits, estimate.accuracy))
        self.windows += 1
        self._say_calibration()
        self.latest = QualityEstimate(
            self.model, self.windows - 1, estimate.instances, estimate.accuracy, estimate.precision,
            estimate.recall, estimate.f1, self.method, len(self.pairs),
            {str(k): dict(v) for k, v in estimate.classes.items()}, self.compared())
        return self.latest

    @property
    def method(self) -> str:
        return ASSUMED if self.calibration is None else ISOTONIC

    def _say_calibration(self) -> None:
        """Log once when the estimate assumes calibrated probabilities, and once when it starts calibrating."""
        if self._told == self.method:
            return
        self._told = self.method
        if self.calibration is None:
            log.info("model %s: estimating quality before labels from its probabilities, assuming they are "
                     "calibrated (fewer than %d labelled instances to calibrate on)", self.model, self.min_labels)
        else:
            log.info("model %s: quality estimates now calibrated (isotonic) on %d labelled instances", self.model,
                     self.calibration.pairs)

    def label(self, items: list[tuple[str, int, bool]]) -> list[QualityEstimate]:
        """Whether joined predictions were right: recalibrate, tally recent windows; the latest estimate again
        (with its comparison) when anything changed."""
        used = 0
        for prediction_id, instance, correct in items:
            key = (prediction_id, instance)
            confidence = self.confidences.get(key)
            if confidence is None:
                self.unmatched_labels += 1
                continue
            used += 1
            self.pairs.append((confidence, bool(correct)))
            for tally in self.tallies:
                row = tally.rows.get(key)
                if row is not None:
                    tally.labelled += 1
                    tally.correct += int(bool(correct))
                    tally.expected += float(tally.hits[row])
        if not used:
            return []
        if len(self.pairs) >= self.min_labels:
            scores = np.fromiter((pair[0] for pair in self.pairs), dtype=np.float64, count=len(self.pairs))
            outcomes = np.fromiter((pair[1] for pair in self.pairs), dtype=np.float64, count=len(self.pairs))
            self.calibration = fit_isotonic(scores, outcomes)
        if self.latest is None:
            return []
        self.latest = self.latest._replace(compared=self.compared())
        return [self.latest]

    def compared(self) -> list[dict[str, Any]]:
        return [tally.describe() for tally in self.tallies if tally.labelled]
