"""Matching feedback items with stored predictions: counts, instance indexes, types and the auto task."""

from __future__ import annotations

import pytest

from sidecar.feedback.join import UNUSABLE, match
from sidecar.feedback.parse import FeedbackError, FeedbackItem
from sidecar.feedback.store import StoredPrediction
from sidecar.feedback.tasks import AUTO, BINARY, MULTICLASS, REGRESSION

CLASSIFIER = StoredPrediction("m", MULTICLASS, 0.0, {0: "2", 1: "0", 2: "1"})


def test_one_truth_per_instance_joins_each_instance() -> None:
    joins = match(FeedbackItem("p", None, (2, 1, (0.0, 1.0, 0.0))), CLASSIFIER, None, 0.5, {})
    assert [(j.key, j.truth, j.predicted) for j in joins] == [(("p", 0), "2", "2"), (("p", 1), "1", "0"),
                                                              (("p", 2), "1", "1")]
    assert {j.task for j in joins} == {MULTICLASS}


def test_a_wrong_truth_count_names_both_counts() -> None:
    with pytest.raises(FeedbackError, match="'p' has 3 instance\\(s\\) but 2 truth\\(s\\) were sent"):
        match(FeedbackItem("p", None, (1, 2)), CLASSIFIER, None, 0.5, {})


def test_an_instance_index_out_of_range_is_named() -> None:
    with pytest.raises(FeedbackError, match="item 4: prediction 'p' has no instance 3 \\(it has 3\\)") as caught:
        match(FeedbackItem("p", 3, (1,)), CLASSIFIER, 4, 0.5, {})
    assert caught.value.item == 4


def test_a_truth_of_the_wrong_type_for_the_task_is_rejected() -> None:
    regressor = StoredPrediction("r", REGRESSION, 0.0, {0: 2.5})
    with pytest.raises(FeedbackError, match="wrong truth type for instance 0 of 'p': truth 'cat' is not a number"):
        match(FeedbackItem("p", None, ("cat",)), regressor, None, 0.5, {})
    with pytest.raises(FeedbackError, match="is not a class index"):
        match(FeedbackItem("p", 1, (0.5,)), CLASSIFIER, None, 0.5, {})


def test_instances_whose_output_cannot_be_compared_are_rejected() -> None:
    stored = StoredPrediction("m", UNUSABLE, 0.0, {0: ""})
    with pytest.raises(FeedbackError, match="no class or single value"):
        match(FeedbackItem("p", 0, (1,)), stored, None, 0.5, {})


def test_an_auto_model_is_decided_by_its_first_truth_and_remembered() -> None:
    latch: dict[str, str] = {}
    stored = StoredPrediction("m", AUTO, 0.0, {0: 0.8})
    [join] = match(FeedbackItem("p", 0, (1,)), stored, None, 0.5, latch)
    assert (join.task, join.truth, join.predicted) == (BINARY, "1", "1")
    assert latch == {"m": BINARY}
    with pytest.raises(FeedbackError, match="not a class index"):
        match(FeedbackItem("q", 0, (0.37,)), StoredPrediction("m", AUTO, 0.0, {0: 0.4}), None, 0.5, latch)


def test_an_auto_model_with_real_valued_truths_is_a_regressor() -> None:
    [join] = match(FeedbackItem("p", 0, (3.25,)), StoredPrediction("m", AUTO, 0.0, {0: 3.0}), None, 0.5, {})
    assert (join.task, join.truth, join.predicted) == (REGRESSION, 3.25, 3.0)
