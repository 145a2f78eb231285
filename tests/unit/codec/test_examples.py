"""tf.Example features to columns: shapes, padding of missing values, context merging, kinds."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from sidecar._proto import tf_pb2
from sidecar.codec import DecodeError
from sidecar.codec.examples import example_row, feature_columns, json_example_row, merged_rows

from .support import png_bytes


def tf_example(**features: Any) -> tf_pb2.Example:
    """A tf.train.Example built with TensorFlow, re-read with the sidecar's wire types."""
    feature = {}
    for name, values in features.items():
        if values and isinstance(values[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif values and isinstance(values[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif values:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feature[name] = tf.train.Feature()
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    wire: tf_pb2.Example = tf_pb2.Example.FromString(example.SerializeToString())
    return wire


def columns(*examples: tf_pb2.Example, context: tf_pb2.Example | None = None) -> dict[str, np.ndarray]:
    rows = (example_row(example) for example in examples)
    return feature_columns(merged_rows(rows, example_row(context) if context is not None else None))


def test_one_value_per_example_gives_one_column() -> None:
    result = columns(tf_example(age=[29.5], city=[b"Paris"], n=[3]), tf_example(age=[41.0], city=[b"Rome"], n=[-2]))

    assert result["age"].dtype == np.float64 and result["age"].tolist() == [29.5, 41.0]
    assert result["city"].dtype == object and result["city"].tolist() == ["Paris", "Rome"]
    assert result["n"].dtype == np.int64 and result["n"].tolist() == [3, -2]


def test_equal_length_lists_give_a_matrix() -> None:
    result = columns(tf_example(v=[1.0, 2.0, 3.0]), tf_example(v=[4.0, 5.0, 6.0]))

    assert result["v"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_missing_features_and_ragged_lists_are_padded_with_missing_markers() -> None:
    result = columns(tf_example(n=[1], word=[b"a"], v=[1.0, 2.0]), tf_example(v=[3.0]), tf_example(n=[5], v=[]))

    assert result["n"].dtype == np.float64
    assert result["n"][0] == 1 and math.isnan(result["n"][1]) and result["n"][2] == 5
    assert result["word"].tolist() == ["a", None, None]
    np.testing.assert_array_equal(result["v"], [[1, 2], [3, np.nan], [np.nan, np.nan]])


def test_bytes_list_values_that_are_not_utf8_keep_their_exact_bytes() -> None:
    image = png_bytes()

    single = columns(tf_example(image=[image], tag=[b"cat"]), tf_example(image=[b"plain"], tag=[b"\xff"]))
    padded = columns(tf_example(image=[image, image[:8]]), tf_example(n=[1]))

    assert single["image"].tolist() == [image, "plain"]
    assert single["tag"].tolist() == ["cat", b"\xff"]
    assert padded["image"].tolist() == [[image, image[:8]], [None, None]]


def test_context_features_are_merged_into_every_example_and_examples_win() -> None:
    result = columns(tf_example(cuisine=[b"Pizzeria"]), tf_example(cuisine=[b"Taqueria"], query=[b"tacos"]),
                     context=tf_example(query=[b"pizza"]))

    assert result["cuisine"].tolist() == ["Pizzeria", "Taqueria"]
    assert result["query"].tolist() == ["pizza", "tacos"]


def test_ints_and_floats_of_one_feature_across_examples_become_float64() -> None:
    result = columns(tf_example(x=[1]), tf_example(x=[2.5]))

    assert result["x"].dtype == np.float64 and result["x"].tolist() == [1.0, 2.5]


def test_bytes_and_numbers_in_one_feature_are_a_dtype_error() -> None:
    with pytest.raises(DecodeError) as caught:
        columns(tf_example(x=[1]), tf_example(x=[b"one"]))

    assert caught.value.reason == "dtype"


def test_json_examples_follow_tf_servings_value_rules() -> None:
    rows = [json_example_row({"f": 1.5, "i": [1, 2], "b": True, "s": "x", "bin": {"b64": "eHk="}}),
            json_example_row({"f": [2.5], "i": [3, 4], "b": [False], "s": ["y"], "bin": [{"b64": "eg=="}]})]

    result = feature_columns(rows)

    assert result["f"].tolist() == [1.5, 2.5]
    assert result["i"].tolist() == [[1, 2], [3, 4]]
    assert result["b"].dtype == np.int64 and result["b"].tolist() == [1, 0]
    assert result["s"].tolist() == ["x", "y"]
    assert result["bin"].tolist() == ["xy", "z"]


def test_json_example_b64_images_keep_their_exact_bytes() -> None:
    image = png_bytes()
    encoded = {"b64": base64.b64encode(image).decode()}

    result = feature_columns([json_example_row({"image": encoded}), json_example_row({"image": [encoded, "x"]})])

    assert result["image"].tolist() == [[image, None], [image, "x"]]


@pytest.mark.parametrize(("example", "reason"), [
    ([1, 2], "json"), ({"x": [1, 2.5]}, "dtype"), ({"x": None}, "dtype"), ({"x": [[1]]}, "dtype"),
    ({"x": {"a": 1}}, "dtype"), ({"x": 2**64}, "dtype"),
])
def test_invalid_json_examples(example: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        feature_columns([json_example_row(example)])

    assert caught.value.reason == reason
