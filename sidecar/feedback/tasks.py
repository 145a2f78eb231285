"""Model tasks, and how a predicted value and a ground truth become something the quality metrics can compare.

Tasks: `binary`, `multiclass`, `regression`, `classification` (binary or multiclass by the prediction's shape)
or `auto` (decided from the data). The per-model override (`models[m].task` in the analysis settings) wins over
the task the analysis reported, which wins over detection.

Predicted values are reduced before they are stored (`reduce_prediction`, applied by `PredictionRules` in the
analysis workers), to a class label or a number:
- the analysis's dicts: `{"class": i, "probabilities": [...], "label"?: s}` is a class: the label when the server
  named the classes, else for two probabilities (binary) `1` when `p[1] >= binary_threshold`, for more the
  analysis's class index; `{"value": v}` is reduced like the bare value `v`.
- a probability/score vector of 2 entries: binary, class `1` when `p[1] >= binary_threshold`, else `0`;
  of 3 or more: multiclass, the arg-max index. A one-entry list is its entry.
- classify results `[[label, score], ...]`: the label with the highest score.
- an integer (or a bool) or a string: a class label (multiclass unless the task says binary).
- a float: kept as a number; binary (thresholded when joined), regression, or `auto`.
Truths (`target`): a class index, a bool, an integer-valued number, a string label or a one-hot/probability vector
(arg-max) for classification; a number for regression. An `auto` scalar becomes binary when the model's first
joined truth is 0/1 and the prediction lies in [0, 1], otherwise regression, and stays so for that model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.feedback.store import Predicted
from sidecar.messages.names import served_model, split_shadow
from sidecar.messages.results import Predictions, StoredPredictions

BINARY = "binary"
MULTICLASS = "multiclass"
CLASSIFICATION = "classification"
REGRESSION = "regression"
AUTO = "auto"
CLASSIFICATION_TASKS = frozenset({BINARY, MULTICLASS})
UNUSABLE = "unusable"  # the task stored for instances whose output cannot be compared with a truth

Truth = int | float | str | tuple[float, ...]


class TaskMismatch(ValueError):
    """A truth (or prediction) does not fit the model's task; the message says how."""


def normalize_task(name: str | None) -> str:
    """Map the task names of settings and of the analysis onto the tasks here."""
    text = (name or "").strip().lower()
    if text.startswith("binary"):
        return BINARY
    if text.startswith("multi"):
        return MULTICLASS
    if text.startswith("class"):
        return CLASSIFICATION
    if text.startswith("regress"):
        return REGRESSION
    return AUTO


def choose_task(override: str | None, reported: str | None) -> str:
    """The override when it names a task, else what the analysis reported."""
    task = normalize_task(override)
    return task if task != AUTO else normalize_task(reported)


def _unwrap(value: Any) -> Any:
    while isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _argmax(values: list[Any] | tuple[Any, ...]) -> int:
    best = 0
    for index in range(1, len(values)):
        if values[index] > values[best]:
            best = index
    return best


def reduce_prediction(value: Any, task: str, threshold: float) -> tuple[str, Predicted] | None:
    """(task, stored value) for one predicted instance, or None when it cannot be compared with a truth."""
    if isinstance(value, dict):
        return _reduce_analysed(value, task, threshold)
    value = _unwrap(value)
    if isinstance(value, bool):
        return (task if task in CLASSIFICATION_TASKS else BINARY), str(int(value))
    if isinstance(value, str):
        return None if task == REGRESSION else (_class_task(task, MULTICLASS), value)
    if isinstance(value, int):
        if task == REGRESSION:
            return REGRESSION, float(value)
        return _class_task(task, MULTICLASS), str(value)
    if isinstance(value, float):
        return _reduce_float(value, task)
    if isinstance(value, (list, tuple)) and value:
        if task == REGRESSION:
            return None
        if all(_is_label_score(item) for item in value):
            best = max(value, key=lambda item: item[1])
            return (BINARY if len(value) == 2 else MULTICLASS), str(best[0])
        if all(_is_number(item) and math.isfinite(item) for item in value):
            return _reduce_scores(value, None, threshold)
    return None


@dataclass(frozen=True)
class PredictionRules:
    """How analysed predictions become what the store keeps: the per-model task override and the binary threshold.

    The analysis workers apply them (`reduce`) so the main process only stores the result; what the analysis found
    about each instance (`PredictionDetails`: version, outlier scores and flags, data-quality issues) goes along.
    """

    binary_threshold: float = 0.5
    task_overrides: Mapping[str, str] = field(default_factory=dict)

    def reduce(self, predictions: Predictions) -> StoredPredictions:
        overrides = self.task_overrides
        primary = split_shadow(predictions.model)[0]  # a shadow (model~shadow) takes its primary's override
        task = choose_task(overrides.get(predictions.model, overrides.get(served_model(primary))), predictions.task)
        threshold = self.binary_threshold
        ids: list[str] = []
        instances: list[int] = []
        tasks: list[str] = []
        values: list[Predicted] = []
        for item in predictions.items:
            reduced = reduce_prediction(item.predicted, task, threshold)
            row_task, value = reduced if reduced is not None else (UNUSABLE, "")
            ids.append(item.prediction_id)
            instances.append(item.instance_index)
            tasks.append(row_task)
            values.append(value)
        return StoredPredictions(predictions.model, ids, instances, tasks, values, predictions.details)


def _class_task(task: str, default: str) -> str:
    return task if task in CLASSIFICATION_TASKS else default


def _reduce_float(value: float, task: str) -> tuple[str, Predicted] | None:
    if not math.isfinite(value):
        return None
    if task == MULTICLASS:
        return (MULTICLASS, str(int(value))) if value.is_integer() and value >= 0 else None
    if task == CLASSIFICATION:
        if 0.0 <= value <= 1.0:
            return BINARY, value
        return (MULTICLASS, str(int(value))) if value.is_integer() and value >= 0 else None
    return task, value


def _reduce_scores(scores: list[Any] | tuple[Any, ...], chosen: Any, threshold: float) -> tuple[str, Predicted]:
    if len(scores) == 1:
        return BINARY, float(scores[0])
    if len(scores) == 2:
        return BINARY, "1" if scores[1] >= threshold else "0"
    index = chosen if isinstance(chosen, int) and not isinstance(chosen, bool) else _argmax(scores)
    return MULTICLASS, str(index)


def _reduce_analysed(value: dict[str, Any], task: str, threshold: float) -> tuple[str, Predicted] | None:
    """The analysis's per-instance dict (see `sidecar.messages.results.PredictedInstance`)."""
    if "value" in value:
        inner = _unwrap(value["value"])
        return None if isinstance(inner, (list, tuple, dict)) else reduce_prediction(inner, task, threshold)
    if task == REGRESSION:
        return None
    label = value.get("label")
    chosen = value.get("class")
    probabilities = value.get("probabilities")
    scores: list[Any] = []
    if isinstance(probabilities, list) and all(_is_number(p) and math.isfinite(p) for p in probabilities):
        scores = probabilities
    if isinstance(label, str) and label:
        return (BINARY if 0 < len(scores) <= 2 else _class_task(task, MULTICLASS)), label
    if scores:
        return _reduce_scores(scores, chosen, threshold)
    if isinstance(chosen, int) and not isinstance(chosen, bool) and chosen >= 0:
        return _class_task(task, MULTICLASS), str(chosen)
    return None


def _is_label_score(item: Any) -> bool:
    return (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            and _is_number(item[1]))


def truth_label(truth: Truth) -> str:
    """A classification truth as a class label."""
    if isinstance(truth, str):
        return truth
    if isinstance(truth, tuple):
        if len(truth) == 1:
            return truth_label(truth[0])
        return str(_argmax(truth))
    if isinstance(truth, float) and not truth.is_integer():
        raise TaskMismatch(f"truth {truth!r} is not a class index (the model is a classifier)")
    if truth < 0:
        raise TaskMismatch(f"truth {truth!r} is not a class index (negative)")
    return str(int(truth))


def truth_number(truth: Truth) -> float:
    """A regression truth as a number."""
    if isinstance(truth, tuple) and len(truth) == 1:
        truth = truth[0]
    if isinstance(truth, (str, tuple)):
        raise TaskMismatch(f"truth {_describe(truth)} is not a number (the model is a regressor)")
    return float(truth)


def _describe(truth: Truth) -> str:
    if isinstance(truth, tuple):
        return f"vector of {len(truth)} values"
    return repr(truth)


def resolve_auto(predicted: Predicted, truth: Truth) -> str:
    """The task of a model whose predictions are bare numbers, from its first truth."""
    if isinstance(predicted, str):
        return MULTICLASS
    value = truth[0] if isinstance(truth, tuple) and len(truth) == 1 else truth
    if isinstance(value, (int, float)) and value in (0, 1) and 0.0 <= predicted <= 1.0:
        return BINARY
    return REGRESSION


def target(task: str, predicted: Predicted, truth: Truth, threshold: float) -> tuple[str, str] | tuple[float, float]:
    """(truth, predicted) ready for the quality window of `task` (binary, multiclass or regression).

    Raises `TaskMismatch` when the truth or the stored prediction does not fit the task.
    """
    if task == REGRESSION:
        if isinstance(predicted, str):
            raise TaskMismatch(f"the stored prediction is the class {predicted!r}, not a number")
        return truth_number(truth), float(predicted)
    if isinstance(predicted, str):
        label = predicted
    elif task == BINARY:
        label = "1" if predicted >= threshold else "0"
    elif predicted.is_integer() and predicted >= 0:
        label = str(int(predicted))
    else:
        raise TaskMismatch(f"the stored prediction {predicted!r} is not a class")
    return truth_label(truth), label
