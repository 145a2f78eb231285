from __future__ import annotations

import numpy as np
import pytest

from sidecar._proto import tf_pb2
from sidecar.testbed import data, numpy_models
from sidecar.testbed.model import CLASSIFY_METHOD, ModelRegistry
from sidecar.testbed.status import ServingError


def test_classifier_learns_the_generating_rule(registry: ModelRegistry) -> None:
    features, truth = data.classifier_batch(2000, seed=42)
    _, outputs = registry.resolve("classifier").predict("", {"features": features})
    probabilities = outputs["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == truth).mean() > 0.85


def test_regressor_and_multi_learn_their_rules(registry: ModelRegistry) -> None:
    features, _ = data.regressor_batch(500, seed=42)
    _, out = registry.resolve("regressor").predict("", {"features": features})
    assert np.abs(out["value"] - data.regressor_target(features)).max() < 0.1
    x, tags, truth = data.multi_batch(500, seed=42)
    _, multi = registry.resolve("multi").predict("", {"x": x, "tag": tags})
    assert ((multi["score"] >= 0.5) == (truth == 1)).mean() > 0.95


def test_classification_signature_is_declared_like_tf_serving_expects() -> None:
    signature = numpy_models.build("classifier", 1).signature_defs["classification"]
    assert signature.method_name == CLASSIFY_METHOD
    assert list(signature.inputs) == ["inputs"] and signature.inputs["inputs"].dtype == tf_pb2.DT_STRING
    assert sorted(signature.outputs) == ["classes", "scores"]


def serialized(feature: tf_pb2.Feature | None) -> np.ndarray:
    example = tf_pb2.Example()
    if feature is not None:
        example.features.feature["features"].CopyFrom(feature)
    batch = np.empty(1, dtype=object)
    batch[:] = [example.SerializeToString()]
    return batch


@pytest.mark.parametrize(("feature", "message"), [
    (None, "Feature: features (data type: float) is required but could not be found."),
    (tf_pb2.Feature(int64_list=tf_pb2.Int64List(value=[1, 2, 3, 4])), "Data type: int64 but expected type: float"),
    (tf_pb2.Feature(float_list=tf_pb2.FloatList(value=[1.0])), "Number of float values != expected"),
])
def test_example_parsing_errors_use_tensorflow_words(feature: tf_pb2.Feature | None, message: str) -> None:
    with pytest.raises(ServingError) as caught:
        numpy_models.parse_features(serialized(feature))
    assert message in caught.value.message


def test_unparseable_examples_are_invalid_argument() -> None:
    batch = np.empty(1, dtype=object)
    batch[:] = [b"\xff\xff\xff"]
    with pytest.raises(ServingError, match="Could not parse example input"):
        numpy_models.parse_features(batch)
