"""Task detection and how predicted values and truths become comparable labels or numbers."""

from __future__ import annotations

import pytest

from sidecar.feedback.tasks import (
    AUTO,
    BINARY,
    CLASSIFICATION,
    MULTICLASS,
    REGRESSION,
    PredictionRules,
    TaskMismatch,
    choose_task,
    normalize_task,
    reduce_prediction,
    resolve_auto,
    target,
)
from sidecar.messages.results import PredictedInstance, Predictions


@pytest.mark.parametrize("name, task", [("classification", CLASSIFICATION), ("regression", REGRESSION),
                                        ("auto", AUTO), (None, AUTO), ("Binary", BINARY),
                                        ("multiclass", MULTICLASS), ("something", AUTO)])
def test_task_names_of_settings_and_analysis_are_understood(name: str | None, task: str) -> None:
    assert normalize_task(name) == task


def test_a_shadow_takes_its_primarys_task_override() -> None:
    rules = PredictionRules(task_overrides={"iris": "binary"})  # a score in [0, 1] read as binary, not a regression
    shadow = Predictions("iris~next", "regression", [PredictedInstance("id~next", 0, "iris~next", {"value": 0.7})])
    assert rules.reduce(shadow).tasks == [BINARY] == rules.reduce(shadow._replace(model="iris")).tasks


def test_the_per_model_override_wins_over_the_reported_task() -> None:
    assert choose_task("regression", "classification") == REGRESSION
    assert choose_task("auto", "classification") == CLASSIFICATION
    assert choose_task(None, None) == AUTO


@pytest.mark.parametrize("predicted, task, expected", [
    # the analysis's dicts
    ({"class": 2, "probabilities": [0.1, 0.2, 0.7]}, CLASSIFICATION, (MULTICLASS, "2")),
    ({"class": 1, "probabilities": [0.4, 0.6]}, CLASSIFICATION, (BINARY, "1")),
    ({"class": 1, "probabilities": [0.7, 0.3]}, CLASSIFICATION, (BINARY, "0")),  # threshold 0.5 on p[1]
    ({"class": 0, "probabilities": [0.8, 0.2], "label": "cat"}, CLASSIFICATION, (BINARY, "cat")),
    ({"class": 3, "probabilities": [0.1, 0.1, 0.1, 0.7], "label": "dog"}, CLASSIFICATION, (MULTICLASS, "dog")),
    ({"class": 4}, CLASSIFICATION, (MULTICLASS, "4")),
    ({"value": 3.5}, REGRESSION, (REGRESSION, 3.5)),
    ({"value": [3.5]}, REGRESSION, (REGRESSION, 3.5)),
    ({"value": [1.0, 2.0]}, REGRESSION, None),  # multi-output regression: no single value to compare
    ({"class": 1, "probabilities": [0.1, 0.9]}, REGRESSION, None),
    # bare values
    ([0.1, 0.7, 0.2], AUTO, (MULTICLASS, "1")),
    ([0.3, 0.7], AUTO, (BINARY, "1")),
    ([0.83], BINARY, (BINARY, 0.83)),
    (0.83, AUTO, (AUTO, 0.83)),
    (0.83, REGRESSION, (REGRESSION, 0.83)),
    (0.83, CLASSIFICATION, (BINARY, 0.83)),
    (7.0, CLASSIFICATION, (MULTICLASS, "7")),
    (7.5, MULTICLASS, None),
    (3, AUTO, (MULTICLASS, "3")),
    (3, REGRESSION, (REGRESSION, 3.0)),
    (True, AUTO, (BINARY, "1")),
    ("spam", AUTO, (MULTICLASS, "spam")),
    ([["cat", 0.2], ["dog", 0.7], ["owl", 0.1]], AUTO, (MULTICLASS, "dog")),
    (float("nan"), AUTO, None),
    ({"unexpected": 1}, AUTO, None),
    ([], AUTO, None),
])
def test_predictions_reduce_to_a_class_label_or_a_number(predicted: object, task: str, expected: object) -> None:
    assert reduce_prediction(predicted, task, threshold=0.5) == expected


def test_the_binary_threshold_decides_two_class_probabilities() -> None:
    assert reduce_prediction({"class": 1, "probabilities": [0.4, 0.6]}, CLASSIFICATION, 0.7) == (BINARY, "0")
    assert target(BINARY, 0.6, 1, threshold=0.7) == ("1", "0")
    assert target(BINARY, 0.6, 1, threshold=0.5) == ("1", "1")


@pytest.mark.parametrize("truth, label", [(2, "2"), (2.0, "2"), ("cat", "cat"), ((0.0, 0.0, 1.0), "2"),
                                          ((0.2, 0.8), "1"), ((1,), "1")])
def test_classification_truths_become_labels(truth: object, label: str) -> None:
    assert target(MULTICLASS, "0", truth, 0.5) == (label, "0")  # type: ignore[arg-type]


@pytest.mark.parametrize("task, predicted, truth, message", [
    (MULTICLASS, "1", 1.5, "not a class index"),
    (MULTICLASS, "1", -1, "negative"),
    (REGRESSION, 2.0, "cat", "not a number"),
    (REGRESSION, 2.0, (0.0, 1.0), "vector of 2 values"),
    (REGRESSION, "cat", 2.0, "not a number"),
    (MULTICLASS, 2.5, 2, "not a class"),
])
def test_truths_that_do_not_fit_the_task_raise_a_clear_mismatch(task: str, predicted: object, truth: object,
                                                                message: str) -> None:
    with pytest.raises(TaskMismatch, match=message):
        target(task, predicted, truth, 0.5)  # type: ignore[arg-type]


def test_an_auto_scalar_is_binary_for_zero_one_truths_inside_the_unit_interval_else_regression() -> None:
    assert resolve_auto(0.3, 1) == BINARY
    assert resolve_auto(0.3, (0,)) == BINARY
    assert resolve_auto(0.3, 0.25) == REGRESSION
    assert resolve_auto(4.2, 1) == REGRESSION
    assert resolve_auto("3", 3) == MULTICLASS
