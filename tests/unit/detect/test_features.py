"""Decoded tensors become feature columns; the analysed output decides the task and the predicted values."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.codec import Exchange
from sidecar.detect.features import (
    CATEGORICAL,
    NUMERIC,
    PREDICTED_CLASS,
    InputFeatures,
    choose_output,
    infer_kinds,
    infer_task,
    output_features,
    output_view,
    predictions,
)
from sidecar.detect.results import CLASSIFICATION, REGRESSION


def exchange(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None, method: str = "predict",
             classes: np.ndarray | None = None) -> Exchange:
    n = next(iter(inputs.values())).shape[0]
    return Exchange(inputs, outputs or {}, n, method, classes)


def test_inputs_are_flattened_per_instance_in_name_order() -> None:
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(4, 2, 2)), "age": np.arange(4, dtype=np.int64)}
    features = InputFeatures.from_arrays(inputs, max_features=100)
    assert features.names == ["age", "x[0]", "x[1]", "x[2]", "x[3]"]
    values = features.extract(inputs, 4).values
    assert values is not None
    assert values.shape == (4, 5)
    np.testing.assert_array_equal(values[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(values[:, 1:], inputs["x"].reshape(4, 4))


def test_features_beyond_the_cap_are_ignored_and_counted() -> None:
    inputs = {"image": np.zeros((2, 8, 8)), "z": np.ones((2,))}
    features = InputFeatures.from_arrays(inputs, max_features=10)
    assert features.width == 10
    assert features.ignored == 64 + 1 - 10
    assert features.names[-1] == "image[9]"
    values = features.extract(inputs, 2).values
    assert values is not None and values.shape == (2, 10)


def test_strings_become_stable_category_codes_that_survive_a_round_trip() -> None:
    first = {"city": np.array(["paris", "rome", "paris"], dtype=object)}
    features = InputFeatures.from_arrays(first, max_features=10)
    values = features.extract(first, 3).values
    assert values is not None
    np.testing.assert_array_equal(values[:, 0], [0, 1, 0])
    restored = InputFeatures.from_meta(features.to_meta())
    later = {"city": np.array(["rome", "oslo"], dtype=object)}
    again = restored.extract(later, 2).values
    assert again is not None
    np.testing.assert_array_equal(again[:, 0], [1, 2])
    assert restored.vocabularies() == {"city": ["paris", "rome", "oslo"]}


def test_a_changed_shape_or_a_missing_input_makes_the_exchange_unusable() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2, 3)), "y": np.zeros((2,))}, max_features=10)
    changed = features.extract({"x": np.zeros((2, 4)), "y": np.zeros((2,))}, 2)
    assert changed.values is None
    assert changed.issues == {("x", "shape"): 2}
    missing = features.extract({"x": np.zeros((2, 3))}, 2)
    assert missing.values is None
    assert missing.issues == {("y", "missing"): 2}


def test_integers_and_floats_are_interchangeable_as_in_json() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2, 3), dtype=np.int64)}, max_features=10)
    result = features.extract({"x": np.full((2, 3), 0.5)}, 2)
    assert result.issues == {}
    assert result.values is not None
    assert float(result.values[0, 0]) == 0.5


def test_strings_where_numbers_were_expected_are_unusable() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2,))}, max_features=10)
    result = features.extract({"x": np.array(["a", "b"], dtype=object)}, 2)
    assert result.values is None
    assert result.issues == {("x", "dtype"): 2}


def test_an_unknown_extra_input_is_reported_and_ignored() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2,))}, max_features=10)
    result = features.extract({"x": np.ones((2,)), "debug": np.ones((2,))}, 2)
    assert result.issues == {("debug", "shape"): 2}
    assert result.values is not None


def test_few_distinct_integers_and_strings_are_categorical() -> None:
    rng = np.random.default_rng(1)
    inputs = {"level": rng.integers(0, 5, size=200), "count": rng.integers(0, 1000, size=200),
              "score": rng.normal(size=200), "tag": np.array(["a", "b"] * 100, dtype=object),
              "flag": rng.integers(0, 2, size=200).astype(bool), "rooms": rng.integers(1, 4, size=200) * 1.0,
              "coarse": np.round(rng.normal(size=200), 1)}
    features = InputFeatures.from_arrays(inputs, max_features=10)
    values = features.extract(inputs, 200).values
    assert values is not None
    kinds = dict(zip(features.names, infer_kinds(values, features, max_categories=20), strict=True))
    assert kinds == {"coarse": NUMERIC, "count": NUMERIC, "flag": CATEGORICAL, "level": CATEGORICAL,
                     "rooms": CATEGORICAL, "score": NUMERIC, "tag": CATEGORICAL}


@pytest.mark.parametrize(("values", "method", "task"), [
    (np.array([[0.2, 0.8], [0.6, 0.4]]), "predict", CLASSIFICATION),
    (np.array([[0.1], [0.9]]), "predict", CLASSIFICATION),
    (np.array([[0.2, 0.5], [0.6, 0.4]]), "predict", REGRESSION),
    (np.array([[3.5], [-1.0]]), "predict", REGRESSION),
    (np.array([[2.0, -1.0], [0.0, 4.0]]), "classify", CLASSIFICATION),
    (np.array([[0.3], [0.4]]), "regress", REGRESSION),
])
def test_the_task_follows_the_output_values_unless_the_method_says(values: np.ndarray, method: str,
                                                                   task: str) -> None:
    view = output_view({"out": values}, None, method, None)
    assert view is not None
    assert infer_task(view) == task


def test_the_output_holding_probabilities_is_analysed_among_several() -> None:
    outputs = {"logits": np.array([[2.0, -1.0]]), "probabilities": np.array([[0.9, 0.1]]),
               "class_ids": np.array([[0]])}
    assert choose_output(outputs, None) == "probabilities"
    assert choose_output(outputs, "logits") == "logits"
    assert choose_output(outputs, "missing") is None
    assert choose_output({"name": np.array(["a"], dtype=object)}, None) is None


def test_classifier_outputs_give_the_predicted_class_and_probability_columns() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]])
    features = output_features(probabilities, "probs", scalar=False, task=CLASSIFICATION, max_features=10)
    assert features.names == [PREDICTED_CLASS, "probs[0]", "probs[1]", "probs[2]"]
    assert features.kinds == [CATEGORICAL, NUMERIC, NUMERIC, NUMERIC]
    np.testing.assert_array_equal(features.values[:, 0], [1, 0])
    single = output_features(np.array([[0.3], [0.7]]), "p", scalar=True, task=CLASSIFICATION, max_features=10)
    assert single.names == [PREDICTED_CLASS, "p"]
    np.testing.assert_array_equal(single.values[:, 0], [0, 1])


def test_regressor_outputs_are_their_values() -> None:
    features = output_features(np.array([[1.5], [2.5]]), "price", scalar=True, task=REGRESSION, max_features=10)
    assert features.names == ["price"]
    assert features.kinds == [NUMERIC]


def test_predicted_values_take_the_shapes_the_feedback_store_reads() -> None:
    probs = output_view({"p": np.array([[0.25, 0.75]])}, None, "predict", None)
    assert probs is not None
    assert predictions(probs, CLASSIFICATION) == [[0.25, 0.75]]
    single = output_view({"p": np.array([0.75])}, None, "predict", None)
    assert single is not None
    assert predictions(single, CLASSIFICATION) == [[0.25, 0.75]]
    labelled = output_view({"scores": np.array([[0.1, 0.9]])}, np.array([["cat", "dog"]], dtype=object), "classify",
                           None)
    assert labelled is not None
    assert predictions(labelled, CLASSIFICATION) == [[["cat", 0.1], ["dog", 0.9]]]
    value = output_view({"output": np.array([3.5, 4.5])}, None, "regress", None)
    assert value is not None
    assert predictions(value, REGRESSION) == [3.5, 4.5]


def test_an_unnamed_rest_tensor_matches_the_named_grpc_one() -> None:
    features = InputFeatures.from_arrays({"features": np.zeros((1, 2))}, max_features=10)
    result = features.extract({"input": np.ones((3, 2))}, 3)
    assert result.issues == {}
    assert result.values is not None and result.values.shape == (3, 2)
    view = output_view({"output": np.array([[0.3, 0.7]])}, None, "predict", None, known="probabilities")
    assert view is not None and view.name == "probabilities"
    other = output_view({"logits": np.array([[1.0, 2.0]]), "probabilities": np.array([[0.3, 0.7]])}, None,
                        "predict", None, known="logits")
    assert other is not None and other.name == "logits"


def test_a_schema_learned_from_an_unnamed_input_adopts_the_real_name() -> None:
    features = InputFeatures.from_arrays({"input": np.zeros((1, 2))}, max_features=10)
    features.adopt_name({"features": np.ones((1, 2))})
    assert features.names == ["features[0]", "features[1]"]
    features.adopt_name({"other": np.ones((1, 2))})
    assert features.names == ["features[0]", "features[1]"]


def test_with_many_classes_only_the_winning_class_is_sent() -> None:
    scores = np.full((2, 100), 0.001)
    scores[0, 42] = scores[1, 7] = 0.9
    view = output_view({"p": scores}, None, "predict", None)
    assert view is not None
    assert predictions(view, CLASSIFICATION) == [42, 7]
    labels = np.array([[f"c{i}" for i in range(100)]] * 2, dtype=object)
    labelled = output_view({"scores": scores}, labels, "classify", None)
    assert labelled is not None
    assert predictions(labelled, CLASSIFICATION) == ["c42", "c7"]
