"""The labels of a history bucket: truths joined by the feedback service while the bucket was open.

A joined truth waits here, per model, until the model's next bucket closes; the bucket takes every truth joined
before its end. Per bucket: classification gives the truths' class frequencies (the most frequent
`max_levels`, the rest as `__other__`), accuracy and macro F1 (the unweighted mean over the classes present as
truth or prediction, as the feedback's quality metrics compute it); regression gives RMSE and MAE. A bucket whose
truths mix both takes the task most of them have. At most `max_pending` truths wait per model (the oldest go).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from sidecar.messages.results import JoinedTruth

REGRESSION = "regression"
OTHER = "__other__"
MAX_MODELS = 10_000


class PendingLabels:
    def __init__(self, max_levels: int, max_pending: int = 100_000) -> None:
        self.max_levels = max_levels
        self.max_pending = max_pending
        self.dropped = 0
        self._waiting: dict[str, deque[JoinedTruth]] = {}

    def add(self, truth: JoinedTruth) -> None:
        waiting = self._waiting.get(truth.model)
        if waiting is None:
            if len(self._waiting) >= MAX_MODELS:
                self.dropped += 1
                return
            waiting = self._waiting[truth.model] = deque(maxlen=self.max_pending)
        if len(waiting) == waiting.maxlen:
            self.dropped += 1
        waiting.append(truth)

    def take(self, model: str, end: float) -> dict[str, Any] | None:
        """The labels of `model`'s bucket ending at `end` (None when no truth joined before it)."""
        waiting = self._waiting.get(model)
        taken: list[JoinedTruth] = []
        while waiting and waiting[0].time < end:
            taken.append(waiting.popleft())
        return summarise(taken, self.max_levels) if taken else None


def summarise(truths: list[JoinedTruth], max_levels: int) -> dict[str, Any]:
    regression = [item for item in truths if item.task == REGRESSION]
    classified = [item for item in truths if item.task != REGRESSION]
    if len(regression) > len(classified):
        errors = [float(item.predicted) - float(item.truth) for item in regression]
        return {"count": len(errors), "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
                "mae": sum(abs(e) for e in errors) / len(errors)}
    counts: dict[str, int] = {}
    for item in classified:
        counts[str(item.truth)] = counts.get(str(item.truth), 0) + 1
    ordered = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    classes = dict(ordered[:max_levels])
    rest = sum(count for _, count in ordered[max_levels:])
    if rest:
        classes[OTHER] = rest
    pairs = [(str(item.truth), str(item.predicted)) for item in classified]
    return {"count": len(pairs), "classes": classes,
            "accuracy": sum(truth == predicted for truth, predicted in pairs) / len(pairs),
            "f1": macro_f1(pairs)}


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    """Mean F1 over the classes present as truth or prediction; a class's F1 is 0 when it has no true positive."""
    hits: dict[str, int] = {}
    truths: dict[str, int] = {}
    predictions: dict[str, int] = {}
    for truth, predicted in pairs:
        truths[truth] = truths.get(truth, 0) + 1
        predictions[predicted] = predictions.get(predicted, 0) + 1
        if truth == predicted:
            hits[truth] = hits.get(truth, 0) + 1
    labels = set(truths) | set(predictions)
    scores = [2 * hits.get(label, 0) / (truths.get(label, 0) + predictions.get(label, 0)) for label in labels]
    return sum(scores) / len(scores) if scores else 0.0
