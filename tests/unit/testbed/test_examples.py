from __future__ import annotations

from typing import Any

import pytest

from sidecar._proto import tf_pb2, tfs_pb2
from sidecar.testbed import examples
from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.numpy_models import parse_features
from sidecar.testbed.status import Code, ServingError


def error_of(call: Any, *args: Any) -> ServingError:
    with pytest.raises(ServingError) as caught:
        call(*args)
    return caught.value


def test_json_values_become_typed_features() -> None:
    example = examples.example_from_json({"f": [1.5, 2.0], "i": 3, "b": True, "s": "x", "raw": {"b64": "AP8="}})
    feature = example.features.feature
    assert list(feature["f"].float_list.value) == [1.5, 2.0]
    assert list(feature["i"].int64_list.value) == [3]
    assert list(feature["b"].int64_list.value) == [1]
    assert list(feature["s"].bytes_list.value) == [b"x"]
    assert list(feature["raw"].bytes_list.value) == [b"\x00\xff"]


@pytest.mark.parametrize(("value", "message"), [
    ({"f": [1, 2.5]}, "Unexpected element type in feature: f expecting type: int64"),
    ({"f": [None]}, "Feature: f has element with unexpected JSON type: Null"),
    ({"f": [[1]]}, "Feature: f has element with unexpected JSON type: Array"),
    ({"f": {"x": 1}}, "Feature: f has element with unexpected JSON type: Object"),
    ({"f": 2**64 - 1}, "Feature: f has uint64 element. Only int64 is supported."),
    ([1], "Example must be JSON object but got JSON Array"),
])
def test_bad_example_values_are_rejected_like_tf_serving(value: Any, message: str) -> None:
    assert error_of(examples.example_from_json, value).message == message


def test_input_from_json_with_and_without_context() -> None:
    plain = examples.input_from_json({"examples": [{"a": 1}]}, "")
    assert plain.WhichOneof("kind") == "example_list" and len(plain.example_list.examples) == 1
    context = examples.input_from_json({"context": {"c": 1}, "examples": [{"a": 1}, {"a": 2}]}, "")
    assert context.WhichOneof("kind") == "example_list_with_context"
    assert len(context.example_list_with_context.examples) == 2


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "When method is classify, key 'examples' is expected and was not found"),
    ({"examples": {}}, "Expecting 'examples' value to be an list/array"),
    ({"examples": []}, "'examples' value is an empty array"),
])
def test_input_from_json_errors(doc: dict[str, Any], message: str) -> None:
    assert message in error_of(examples.input_from_json, doc, "{}").message


def test_context_features_are_merged_and_the_examples_own_win() -> None:
    source = tfs_pb2.Input()
    source.example_list_with_context.context.CopyFrom(
        examples.example_from_json({"features": [1.0, 1.0, 1.0, 1.0], "extra": "x"}))
    source.example_list_with_context.examples.add().CopyFrom(examples.example_from_json({}))
    source.example_list_with_context.examples.add().CopyFrom(
        examples.example_from_json({"features": [2.0, 2.0, 2.0, 2.0]}))
    batch = examples.serialized_examples(source)
    assert parse_features(batch).tolist() == [[1.0] * 4, [2.0] * 4]
    assert tf_pb2.Example.FromString(batch[0]).features.feature["extra"].bytes_list.value == [b"x"]


def test_empty_input_is_rejected() -> None:
    assert error_of(examples.serialized_examples, tfs_pb2.Input()).message == "Input is empty."


def classifier_input(rows: int) -> tfs_pb2.Input:
    return examples.input_from_json({"examples": [{"features": [5.0, 3.4, 1.5, 0.25]}] * rows}, "")


def test_classify_uses_the_classification_signature_by_default(registry: ModelRegistry) -> None:
    key, results = examples.classify(registry.resolve("classifier"), "", classifier_input(2))
    assert key == "classification" and len(results) == 2
    assert [label for label, _ in results[0]] == ["0", "1", "2"]
    assert max(results[0], key=lambda pair: pair[1])[0] == "0"
    assert abs(sum(score for _, score in results[0]) - 1.0) < 1e-5


def test_regress_uses_the_regression_signature(registry: ModelRegistry) -> None:
    key, values = examples.regress(registry.resolve("regressor"), "", classifier_input(3))
    assert key == "regression" and len(values) == 3


def test_a_signature_of_another_method_is_rejected(registry: ModelRegistry) -> None:
    error = error_of(examples.classify, registry.resolve("classifier"), "serving_default", classifier_input(1))
    assert error.code == Code.INVALID_ARGUMENT
    assert error.message == ("Expected classification signature method_name to be tensorflow/serving/classify. "
                             "Was: tensorflow/serving/predict")
    error = error_of(examples.regress, registry.resolve("multi"), "", classifier_input(1))
    assert "Expected regression signature method_name to be tensorflow/serving/regress" in error.message


def test_feature_type_mismatch_is_invalid_argument(registry: ModelRegistry) -> None:
    source = examples.input_from_json({"examples": [{"features": [5, 3, 1, 0]}]}, "")
    error = error_of(examples.classify, registry.resolve("classifier"), "", source)
    assert error.code == Code.INVALID_ARGUMENT and "expected type: float" in error.message
