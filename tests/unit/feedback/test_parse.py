"""Feedback bodies: the three accepted shapes, and a message naming the problem for anything else."""

from __future__ import annotations

import json

import pytest

from sidecar.feedback.parse import FeedbackError, FeedbackItem, parse_body


def parse(document: object, max_instances: int = 1000) -> list[FeedbackItem]:
    return parse_body(json.dumps(document).encode(), max_instances)


def test_one_truth_per_instance_in_order() -> None:
    [item] = parse({"prediction_id": "p1", "truth": [1, 0, "cat", [0, 1], 2.5, True]})
    assert item == FeedbackItem("p1", None, (1, 0, "cat", (0.0, 1.0), 2.5, 1))
    assert item.keys() == [("p1", i) for i in range(6)]


def test_one_instance_with_its_index() -> None:
    [item] = parse({"prediction_id": "p1", "instance": 3, "truth": [0.1, 0.9]})
    assert item == FeedbackItem("p1", 3, ((0.1, 0.9),))
    assert item.keys() == [("p1", 3)]


def test_an_array_of_feedback_objects() -> None:
    items = parse([{"prediction_id": "a", "truth": [1]}, {"prediction_id": "b", "instance": 0, "truth": 4.0}])
    assert [item.prediction_id for item in items] == ["a", "b"]
    assert sum(item.size for item in items) == 2


@pytest.mark.parametrize("body, message", [
    (b"{not json", "malformed JSON: Expecting property name"),
    (b"\xff\xfe", "malformed JSON"),
    (b"", "malformed JSON"),
    (b"42", "must be a JSON object or an array of objects, got the number 42"),
    (b"[]", "empty array"),
    (b"[1]", "item 0: expected an object"),
])
def test_malformed_bodies_are_rejected_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse_body(body, 1000)


@pytest.mark.parametrize("document, message", [
    ({"truth": [1]}, "prediction_id must be a string"),
    ({"prediction_id": "", "truth": [1]}, "prediction_id must be a string"),
    ({"prediction_id": 7, "truth": [1]}, "got 7"),
    ({"prediction_id": "x" * 129, "truth": [1]}, "1 to 128 printable"),
    ({"prediction_id": "p"}, "missing 'truth'"),
    ({"prediction_id": "p", "truth": 1}, "truth must be a list with one truth per instance"),
    ({"prediction_id": "p", "truth": []}, "truth is an empty list"),
    ({"prediction_id": "p", "truth": [None]}, r"truth\[0\] must be a class index, a class label, a one-hot/probab"),
    ({"prediction_id": "p", "truth": [1, {"a": 1}]}, r"truth\[1\] .* got an object"),
    ({"prediction_id": "p", "truth": [[1, "x"]]}, r"truth\[0\] must be a one-hot or probability vector"),
    ({"prediction_id": "p", "truth": [[]]}, "empty vector"),
    ({"prediction_id": "p", "truth": [[[1]]]}, "found an array"),
    ({"prediction_id": "p", "truth": [""]}, "class label must have 1 to 128"),
    ({"prediction_id": "p", "instance": -1, "truth": 1}, "instance must be a non-negative integer"),
    ({"prediction_id": "p", "instance": "0", "truth": 1}, "instance must be a non-negative integer"),
    ({"prediction_id": "p", "instance": True, "truth": 1}, "instance must be a non-negative integer"),
    ({"prediction_id": "p", "instance": 0, "truth": None}, "truth must be a class index"),
    ({"prediction_id": "p", "truth": [1], "extra": 1}, "unknown field 'extra'"),
])
def test_wrong_fields_and_types_name_the_field(document: object, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        parse(document)


def test_errors_in_a_batch_name_the_item() -> None:
    with pytest.raises(FeedbackError, match=r"item 1: truth\[0\]") as caught:
        parse([{"prediction_id": "a", "truth": [1]}, {"prediction_id": "b", "truth": [None]}])
    assert caught.value.item == 1


def test_non_finite_truths_are_rejected() -> None:
    with pytest.raises(FeedbackError, match="finite number"):
        parse_body(b'{"prediction_id": "p", "truth": [NaN]}', 10)
    with pytest.raises(FeedbackError, match="finite numbers"):
        parse_body(b'{"prediction_id": "p", "truth": [[0, Infinity]]}', 10)


def test_too_many_instances_in_one_request_are_refused() -> None:
    with pytest.raises(FeedbackError, match="5 truth instances in one request; at most 4"):
        parse({"prediction_id": "p", "truth": [0] * 5}, max_instances=4)
