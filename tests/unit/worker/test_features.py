"""Decoded tensors become feature columns; the analysed output decides the task and the predicted values."""

from __future__ import annotations

import io

import numpy as np
import pytest

from sidecar.codec import Exchange
from sidecar.messages.results import CLASSIFICATION, REGRESSION
from sidecar.worker import features as features_module
from sidecar.worker.features import (
    CATEGORICAL,
    EXCLUDED,
    FROM_CONFIG,
    FROM_DATA,
    FROM_SIGNATURE,
    IMAGE,
    NUMERIC,
    PREDICTED_CLASS,
    VOCABULARY_CAP,
    InputFeatures,
    choose_output,
    infer_kinds,
    infer_task,
    is_class_ids,
    output_features,
    output_view,
    predictions,
)
from sidecar.worker.images import IMAGE_SIZE
from sidecar.worker.signature import FLOAT, INT, Signature, TensorInfo


def exchange(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None, method: str = "predict",
             classes: np.ndarray | None = None) -> Exchange:
    n = next(iter(inputs.values())).shape[0]
    return Exchange(inputs, outputs or {}, n, method, classes)


def test_inputs_are_flattened_per_instance_in_name_order() -> None:
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(4, 2, 2)), "age": np.arange(4, dtype=np.int64)}
    features = InputFeatures.from_arrays(inputs)
    assert features.names == ["age", "x[0]", "x[1]", "x[2]", "x[3]"]
    values = features.extract(inputs, 4).values
    assert values is not None
    assert values.shape == (4, 5)
    np.testing.assert_array_equal(values[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(values[:, 1:], inputs["x"].reshape(4, 4))


def test_every_column_of_a_wide_input_counts() -> None:
    inputs = {"image": np.arange(2 * 64, dtype=np.float64).reshape(2, 8, 8), "z": np.ones((2,))}
    features = InputFeatures.from_arrays(inputs)
    assert features.width == 65
    assert features.names[63] == "image[63]"
    values = features.extract(inputs, 2).values
    assert values is not None and values.shape == (2, 65)
    np.testing.assert_array_equal(values[1, :64], np.arange(64, 128))


def test_strings_become_stable_category_codes_that_survive_a_round_trip() -> None:
    first = {"city": np.array(["paris", "rome", "paris"], dtype=object)}
    features = InputFeatures.from_arrays(first)
    assert features.names == ["city", "city#length", "city#letters", "city#digits", "city#spaces"]
    values = features.extract(first, 3).values
    assert values is not None
    np.testing.assert_array_equal(values[:, 0], [0, 1, 0])
    np.testing.assert_array_equal(values[:, 1], [5, 4, 5])
    restored = InputFeatures.from_meta(features.to_meta())
    later = {"city": np.array(["rome", "oslo"], dtype=object)}
    again = restored.extract(later, 2).values
    assert again is not None
    np.testing.assert_array_equal(again[:, 0], [1, 2])
    assert restored.vocabularies() == {"city": ["paris", "rome", "oslo"]}


def test_the_codes_of_a_string_column_are_named_by_its_strings_and_the_shared_one_other() -> None:
    names = np.array([f"v{n}" for n in range(VOCABULARY_CAP + 5)], dtype=object)
    features = InputFeatures.from_arrays({"id": names[:3], "x": np.zeros(3)})
    values = features.extract({"id": names[:3], "x": np.zeros(3)}, 3).values
    assert values is not None
    assert features.categories(0) == ["v0", "v1", "v2"] and features.categories(5) is None  # x is no string
    values = features.extract({"id": names, "x": np.zeros(names.size)}, names.size).values
    assert values is not None and values[-1, 0] == VOCABULARY_CAP  # later strings share one code
    named = features.categories(0)
    assert named is not None and len(named) == VOCABULARY_CAP + 1
    assert [named[int(code)] for code in values[[0, 999, 1000, 1004], 0]] == ["v0", "v999", "__other__", "__other__"]


def test_a_changed_shape_or_a_missing_input_makes_the_exchange_unusable() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2, 3)), "y": np.zeros((2,))})
    changed = features.extract({"x": np.zeros((2, 4)), "y": np.zeros((2,))}, 2)
    assert changed.values is None
    assert changed.issues == {("x", "shape"): 2}
    missing = features.extract({"x": np.zeros((2, 3))}, 2)
    assert missing.values is None
    assert missing.issues == {("y", "missing"): 2}


def test_integers_and_floats_are_interchangeable_as_in_json() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2, 3), dtype=np.int64)})
    result = features.extract({"x": np.full((2, 3), 0.5)}, 2)
    assert result.issues == {}
    assert result.values is not None
    assert float(result.values[0, 0]) == 0.5


def test_strings_where_numbers_were_expected_are_unusable() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2,))})
    result = features.extract({"x": np.array(["a", "b"], dtype=object)}, 2)
    assert result.values is None
    assert result.issues == {("x", "dtype"): 2}


def test_an_unknown_extra_input_is_reported_and_ignored() -> None:
    features = InputFeatures.from_arrays({"x": np.zeros((2,))})
    result = features.extract({"x": np.ones((2,)), "debug": np.ones((2,))}, 2)
    assert result.issues == {("debug", "shape"): 2}
    assert result.values is not None


def test_floats_are_numeric_and_few_distinct_integers_and_strings_categorical() -> None:
    rng = np.random.default_rng(1)
    inputs = {"level": rng.integers(0, 5, size=200), "count": rng.integers(0, 1000, size=200),
              "score": rng.normal(size=200), "tag": np.array(["a", "b"] * 100, dtype=object),
              "flag": rng.integers(0, 2, size=200).astype(bool), "rooms": rng.integers(1, 4, size=200) * 1.0,
              "coarse": np.round(rng.normal(size=200), 1)}
    features = InputFeatures.from_arrays(inputs)
    values = features.extract(inputs, 200).values
    assert values is not None
    found = infer_kinds(values, features, max_categories=20)
    kinds = {name: kind for name, kind in zip(features.names, found.kinds, strict=True) if "#" not in name}
    assert kinds == {"coarse": NUMERIC, "count": NUMERIC, "flag": CATEGORICAL, "level": CATEGORICAL,
                     "rooms": NUMERIC, "score": NUMERIC, "tag": CATEGORICAL}
    assert set(found.sources) == {FROM_DATA}
    summaries = [kind for name, kind in zip(features.names, found.kinds, strict=True) if "#" in name]
    assert summaries == [EXCLUDED] * 4  # the tag's code is analysed, so its text summary is not


def test_integer_valued_float_pixels_are_numeric() -> None:
    digits = np.random.default_rng(2).integers(0, 17, size=(300, 64)).astype(np.float64)
    features = InputFeatures.from_arrays({"pixels": digits})
    found = infer_kinds(digits, features, max_categories=20)
    assert found.kinds == [NUMERIC] * 64


def test_the_signature_decides_the_element_type_before_the_data() -> None:
    ints = np.random.default_rng(3).integers(0, 3, size=(100, 2))
    declared = Signature({"x": TensorInfo("x", FLOAT, (2,))}, {}, "tfserving rest")
    features = InputFeatures.from_arrays({"input": ints}, declared)
    assert features.names == ["x[0]", "x[1]"]  # the unnamed REST input takes the signature's name
    found = infer_kinds(ints.astype(np.float64), features, max_categories=20)
    assert found.kinds == [NUMERIC, NUMERIC]
    assert found.sources == [FROM_SIGNATURE, FROM_SIGNATURE]
    undeclared = InputFeatures.from_arrays({"x": ints})
    assert infer_kinds(ints.astype(np.float64), undeclared, max_categories=20).kinds == [CATEGORICAL, CATEGORICAL]


def test_a_configured_kind_wins_over_signature_and_data() -> None:
    values = np.random.default_rng(4).normal(size=(50, 2))
    features = InputFeatures.from_arrays({"x": values})
    found = infer_kinds(values, features, max_categories=20, overrides={"x[1]": CATEGORICAL})
    assert found.kinds == [NUMERIC, CATEGORICAL]
    assert found.sources == [FROM_DATA, FROM_CONFIG]


def test_free_text_is_summarised_not_one_category_per_value() -> None:
    texts = np.array([f"order {i} shipped" for i in range(100)], dtype=object)
    features = InputFeatures.from_arrays({"note": texts})
    values = features.extract({"note": texts}, 100).values
    assert values is not None
    found = infer_kinds(values, features, max_categories=20)
    assert found.kinds == [EXCLUDED, NUMERIC, NUMERIC, NUMERIC, NUMERIC]


@pytest.mark.parametrize("kept", [0, 2, features_module.TEXT_CELLS_KEPT])
def test_repeated_text_values_get_the_code_and_summary_each_one_gets_alone(kept: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "TEXT_CELLS_KEPT", kept)  # none, some or all of the values kept
    column = np.array(["red", None, "green", "red", b"red", "", "green", None, "gr\u00fcn"], dtype=object)
    features = InputFeatures.from_arrays({"colour": column})
    first = features.extract({"colour": column}, len(column)).values
    together = features.extract({"colour": column}, len(column)).values  # again, with what was kept
    np.testing.assert_array_equal(first, together)
    alone = InputFeatures.from_arrays({"colour": column})  # same vocabulary, one cell at a time
    one_by_one = np.vstack([alone.extract({"colour": column[row:row + 1]}, 1).values for row in range(len(column))])
    np.testing.assert_array_equal(together, one_by_one)  # NaN summaries of None compare equal here
    codes = together[:, 0]
    assert codes[0] == codes[3] and codes[2] == codes[6] and codes[1] == codes[7]
    assert len({codes[0], codes[1], codes[2], codes[5], codes[8]}) == 5
    np.testing.assert_allclose(together[0, 1:], [3, 1, 0, 0])
    assert np.isnan(together[1, 1:]).all()


def test_odd_values_in_a_text_column_are_coded_as_they_would_be_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    column = np.array(["z", -0.0, 0.0, float("nan"), float("nan"), 1, True, "z"], dtype=object)
    kept = InputFeatures.from_arrays({"tag": column}).extract({"tag": column}, len(column)).values
    monkeypatch.setattr(features_module, "TEXT_CELLS_KEPT", 0)
    alone = InputFeatures.from_arrays({"tag": column}).extract({"tag": column}, len(column)).values
    np.testing.assert_array_equal(kept, alone)
    assert kept is not None and kept[1, 0] != kept[2, 0]  # -0.0 and 0.0 are different strings


def test_encoded_images_become_pixel_columns() -> None:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(3, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    encoded = np.array([png(image) for image in pixels] + [b"\x89PNG broken"], dtype=object)
    features = InputFeatures.from_arrays({"image": encoded})
    assert features.specs[0].encoding == IMAGE
    assert features.width == IMAGE_SIZE * IMAGE_SIZE * 3
    result = features.extract({"image": encoded}, 4)
    assert result.values is not None
    np.testing.assert_allclose(result.values[:3], pixels.reshape(3, -1) / 255.0)
    assert np.isnan(result.values[3]).all()
    assert result.issues == {("image", "undecodable"): 1}
    found = infer_kinds(result.values, features, max_categories=20)
    assert set(found.kinds) == {NUMERIC}


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


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
    features = InputFeatures.from_arrays({"features": np.zeros((1, 2))})
    result = features.extract({"input": np.ones((3, 2))}, 3)
    assert result.issues == {}
    assert result.values is not None and result.values.shape == (3, 2)
    view = output_view({"output": np.array([[0.3, 0.7]])}, None, "predict", None, known="probabilities")
    assert view is not None and view.name == "probabilities"
    other = output_view({"logits": np.array([[1.0, 2.0]]), "probabilities": np.array([[0.3, 0.7]])}, None,
                        "predict", None, known="logits")
    assert other is not None and other.name == "logits"


def test_a_schema_learned_from_an_unnamed_input_adopts_the_real_name() -> None:
    features = InputFeatures.from_arrays({"input": np.zeros((1, 2))})
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


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_an_integer_output_of_one_value_per_instance_is_class_ids(shape: tuple[int, ...]) -> None:
    ids = np.array([0, 2, 1, 2]).reshape(shape)
    view = output_view({"label": ids}, None, "predict", None)
    assert view is not None and view.integers
    assert is_class_ids(view, configured_classification=False)
    assert infer_task(view, class_ids=True) == CLASSIFICATION
    assert predictions(view, CLASSIFICATION, class_ids=True) == [0, 2, 1, 2]
    features = output_features(view.values, "label", view.scalar, CLASSIFICATION, 10, class_ids=True)
    assert features.names == [PREDICTED_CLASS]
    np.testing.assert_array_equal(features.values[:, 0], [0, 2, 1, 2])


def test_float_class_ids_count_as_class_ids_only_when_classification_is_configured() -> None:
    view = output_view({"out": np.array([[0.0], [2.0], [1.0]])}, None, "predict", None)
    assert view is not None
    assert not is_class_ids(view, configured_classification=False)
    assert is_class_ids(view, configured_classification=True)
    declared = Signature({}, {"out": TensorInfo("out", INT, ())}, "v2 rest")
    typed = output_view({"out": np.array([[0.0], [1.0]])}, None, "predict", None, signature=declared)
    assert typed is not None and is_class_ids(typed, configured_classification=False)


def test_a_row_without_a_finite_value_points_to_no_task() -> None:
    view = output_view({"p": np.array([[np.nan, np.nan]])}, None, "predict", None)
    assert view is not None
    assert infer_task(view) is None
    mixed = output_view({"p": np.array([[np.nan, np.nan], [0.3, 0.7]])}, None, "predict", None)
    assert mixed is not None
    assert infer_task(mixed) == CLASSIFICATION
