"""Predict bodies as feature rows and back: every body shape TF Serving's REST API takes, named as the analysis
names the features, rebuilt in the client's shape; inputs that are not numbers are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sidecar.explain.bodies import BodyShape, answer_values, request_rows
from sidecar.explain.errors import ExplainError
from sidecar.worker.features import InputFeatures, TensorSpec

A_AND_B = InputFeatures([TensorSpec("b", "float64", ()), TensorSpec("a", "float64", (2,))])
ROWS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # a[0], a[1], b: inputs in name order

BODIES: list[dict[str, Any]] = [
    {"instances": [{"a": [1.0, 2.0], "b": 3.0}, {"a": [4.0, 5.0], "b": 6.0}], "signature_name": "serving_default"},
    {"inputs": {"a": [[1.0, 2.0], [4.0, 5.0]], "b": [3.0, 6.0]}},
]


@pytest.mark.parametrize("body", BODIES, ids=["rows", "columns"])
def test_named_inputs_become_the_analysis_features_and_the_body_is_rebuilt_in_its_own_shape(
        body: dict[str, Any]) -> None:
    rows, features, shape = request_rows(body, A_AND_B)
    assert features.names == ["a[0]", "a[1]", "b"]
    np.testing.assert_array_equal(rows, ROWS)
    assert shape.body(rows) == body


@pytest.mark.parametrize("body", [{"instances": [[1.0, 2.0, 3.0]]}, {"inputs": [[1.0, 2.0, 3.0]]}],
                         ids=["rows", "columns"])
def test_one_unnamed_input_takes_the_name_the_analysis_learned(body: dict[str, Any]) -> None:
    learned = InputFeatures([TensorSpec("features", "float64", (3,), declared="float")])
    rows, features, shape = request_rows(body, learned)
    assert features.names == ["features[0]", "features[1]", "features[2]"]
    assert shape.body(rows) == body


def test_integer_inputs_stay_integers_and_multidimensional_ones_keep_their_shape() -> None:
    learned = InputFeatures([TensorSpec("grid", "float64", (2, 2)), TensorSpec("n", "int64", ())])
    body = {"instances": [{"grid": [[1.0, 2.0], [3.0, 4.0]], "n": 7}]}
    rows, features, shape = request_rows(body, learned)
    assert features.names == ["grid[0]", "grid[1]", "grid[2]", "grid[3]", "n"]
    perturbed = shape.body(rows + 0.2)
    assert perturbed["instances"][0]["n"] == 7 and type(perturbed["instances"][0]["n"]) is int
    assert perturbed["instances"][0]["grid"] == [[1.2, 2.2], [3.2, 4.2]]


def test_the_importance_sends_rows_named_only_when_the_model_has_several_inputs() -> None:
    assert BodyShape.rows_for(A_AND_B).body(ROWS[:1]) == {"instances": [{"a": [1.0, 2.0], "b": 3.0}]}
    single = InputFeatures([TensorSpec("x", "float64", (2,))])
    assert BodyShape.rows_for(single).body(np.array([[1.0, 2.0]])) == {"instances": [[1.0, 2.0]]}


@pytest.mark.parametrize(("body", "learned", "words"), [
    ({"instances": [{"x": [1.0, 2.0], "tag": "alpha"}]}, None, "input 'tag' holds strings"),
    ({"instances": [[1.0, 2.0]]}, InputFeatures([TensorSpec("x", "float64", (2,)), TensorSpec("t", "string", ())]),
     "input 't' holds strings"),
    ({"instances": [{"b": 1.0}]}, A_AND_B, "'a': missing"),
    ({"instances": [{"a": [1.0, 2.0, 3.0], "b": 1.0}]}, A_AND_B, "'a': shape"),
    ({"instances": [{"a": [1.0, 2.0], "b": 1.0, "c": 2.0}]}, A_AND_B, "'c': shape"),
    ({"instances": [[1.0, float("nan")]]}, None, "instance 0 holds a value that is not a finite number"),
    ({"instances": [[1.0], [1.0, 2.0]]}, None, "ragged"),
])
def test_what_cannot_be_explained_is_a_400_that_says_why(body: dict[str, Any], learned: InputFeatures | None,
                                                          words: str) -> None:
    with pytest.raises(ExplainError) as caught:
        request_rows(body, learned)
    assert caught.value.status == 400 and words in str(caught.value)


def test_the_analysed_output_is_explained_when_the_model_has_several() -> None:
    answer = {"predictions": [{"score": 0.25, "label_bytes": {"b64": "eA=="}}, {"score": 0.75, "label_bytes": "y"}]}
    assert answer_values(answer, "score").tolist() == [[0.25], [0.75]]
    with pytest.raises(ExplainError) as caught:
        answer_values(answer, None)
    assert caught.value.status == 409 and "several outputs" in str(caught.value)
    assert answer_values({"outputs": [[0.1, 0.9]]}, None).tolist() == [[0.1, 0.9]]
