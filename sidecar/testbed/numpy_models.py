"""Numpy backend, used when TensorFlow is not installed: the same models, signatures and metadata, no SavedModel.

Each model is fitted on the same generating rules as the Keras models (softmax regression, least squares,
logistic regression by plain gradient descent), deterministically, in milliseconds. Signature defs mirror what
the TensorFlow export produces (tensor names included), so clients cannot tell the backends apart except by
the numbers. Classification and regression signatures parse serialized `tf.Example`s with our wire protos and
report parse errors in TensorFlow's words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.testbed import data
from sidecar.testbed.model import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, Array, Servable
from sidecar.testbed.status import invalid_argument
from sidecar.testbed.tensors import DT, make_shape

Spec = tuple[str, int, Sequence[int]]  # alias, DataType, shape


def _signature(key: str, method: str, inputs: Sequence[Spec], outputs: Sequence[Spec]) -> tf_pb2.SignatureDef:
    signature = tf_pb2.SignatureDef(method_name=method)
    for alias, dtype, shape in inputs:
        signature.inputs[alias].CopyFrom(
            tf_pb2.TensorInfo(name=f"{key}_{alias}:0", dtype=dtype, tensor_shape=make_shape(shape)))  # type: ignore[arg-type]
    for index, (alias, dtype, shape) in enumerate(sorted(outputs)):
        signature.outputs[alias].CopyFrom(
            tf_pb2.TensorInfo(name=f"StatefulPartitionedCall:{index}", dtype=dtype,  # type: ignore[arg-type]
                              tensor_shape=make_shape(shape)))
    return signature


_FEATURES: Spec = ("features", DT.DT_FLOAT, (-1, 4))
_EXAMPLES: Spec = ("inputs", DT.DT_STRING, (-1,))


def _softmax(logits: Array) -> Array:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: Array = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


def _sigmoid(z: Array) -> Array:
    result: Array = (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    return result


def _fit_classifier(version: int) -> Callable[[Array], Array]:
    features, classes = data.classifier_batch(1500, seed=version)
    mean, scale = features.mean(axis=0), features.std(axis=0)
    x = np.hstack([(features - mean) / scale, np.ones((len(features), 1), np.float32)])
    onehot = np.eye(3, dtype=np.float32)[classes]
    weights = np.zeros((5, 3), np.float32)
    for _ in range(200 + 50 * version):
        weights -= 0.5 * x.T @ (_softmax(x @ weights) - onehot) / len(x)

    def predict(batch: Array) -> Array:
        z = np.hstack([(batch - mean) / scale, np.ones((len(batch), 1), np.float32)])
        return _softmax(z @ weights)
    return predict


def _fit_regressor(version: int) -> Callable[[Array], Array]:
    features, target = data.regressor_batch(1500, seed=version)
    x = np.hstack([features, np.ones((len(features), 1), np.float32)])
    weights = np.linalg.lstsq(x, target, rcond=None)[0].astype(np.float32)
    return lambda batch: (batch @ weights[:4] + weights[4]).astype(np.float32)


def _fit_multi(version: int) -> Callable[[Array], Array]:
    x, _, truth = data.multi_batch(1500, seed=version)
    xb = np.hstack([x, np.ones((len(x), 1), np.float32)])
    weights = np.zeros(4, np.float32)
    for _ in range(200 + 50 * version):
        weights -= 1.0 * xb.T @ (_sigmoid(xb @ weights) - truth) / len(xb)
    return lambda batch: _sigmoid(batch @ weights[:3] + weights[3])


def parse_features(serialized: Array, width: int = 4) -> Array:
    """`tf.io.parse_example` with one required FixedLenFeature `features` of `width` floats."""
    rows = np.zeros((len(serialized), width), np.float32)
    for index, blob in enumerate(serialized):
        try:
            example = tf_pb2.Example.FromString(bytes(blob))
        except Exception:
            raise invalid_argument(f"Could not parse example input, value: '{bytes(blob)!r}'") from None
        feature = example.features.feature.get("features")
        if feature is None or feature.WhichOneof("kind") is None:
            raise invalid_argument("Name: <unknown>, Feature: features (data type: float) is required but could "
                                   "not be found.")
        kind = feature.WhichOneof("kind")
        if kind != "float_list":
            actual = {"int64_list": "int64", "bytes_list": "string"}[str(kind)]
            raise invalid_argument(f"Name: <unknown>, Key: features, Index: {index}.  Data types don't match. "
                                   f"Data type: {actual} but expected type: float")
        values = list(feature.float_list.value)
        if len(values) != width:
            raise invalid_argument(f"Name: <unknown>, Key: features, Index: {index}.  Number of float values != "
                                   f"expected.  Values size: {len(values)} but output shape: [{width}]")
        rows[index] = values
    return rows


def classifier(version: int) -> Servable:
    predict = _fit_classifier(version)
    labels = np.array([label.encode() for label in data.CLASS_LABELS], dtype=object)

    def run(key: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        if key == "classification":
            scores = predict(parse_features(inputs["inputs"]))
            return {"classes": np.tile(labels, (len(scores), 1)), "scores": scores}
        return {"probabilities": predict(inputs["features"])}

    signatures = {
        "classification": _signature("classification", CLASSIFY_METHOD, [_EXAMPLES],
                                     [("classes", DT.DT_STRING, (-1, 3)), ("scores", DT.DT_FLOAT, (-1, 3))]),
        "serving_default": _signature("serving_default", PREDICT_METHOD, [_FEATURES],
                                      [("probabilities", DT.DT_FLOAT, (-1, 3))]),
    }
    return Servable("classifier", version, signatures, run)


def regressor(version: int) -> Servable:
    predict = _fit_regressor(version)

    def run(key: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        if key == "regression":
            return {"outputs": predict(parse_features(inputs["inputs"]))}
        return {"value": predict(inputs["features"])}

    signatures = {
        "regression": _signature("regression", REGRESS_METHOD, [_EXAMPLES], [("outputs", DT.DT_FLOAT, (-1,))]),
        "serving_default": _signature("serving_default", PREDICT_METHOD, [_FEATURES], [("value", DT.DT_FLOAT, (-1,))]),
    }
    return Servable("regressor", version, signatures, run)


def multi(version: int) -> Servable:
    predict = _fit_multi(version)

    def run(key: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        score = predict(inputs["x"])
        labels = np.empty(len(score), dtype=object)
        labels[:] = [bytes(tag) + (b":high" if s >= 0.5 else b":low") for tag, s in zip(inputs["tag"], score,
                                                                                        strict=True)]
        return {"score": score, "label_bytes": labels}

    signatures = {"serving_default": _signature(
        "serving_default", PREDICT_METHOD, [("x", DT.DT_FLOAT, (-1, 3)), ("tag", DT.DT_STRING, (-1,))],
        [("score", DT.DT_FLOAT, (-1,)), ("label_bytes", DT.DT_STRING, (-1,))])}
    return Servable("multi", version, signatures, run)


def pair(version: int) -> Servable:
    weights, bias = data.fit_pair(version)

    def run(key: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = np.column_stack([inputs["a"], inputs["b"]]).astype(np.float32)
        return {"value": (x @ weights + np.float32(bias)).astype(np.float32)}

    signatures = {"serving_default": _signature(
        "serving_default", PREDICT_METHOD, [("a", DT.DT_FLOAT, (-1, 2)), ("b", DT.DT_FLOAT, (-1,))],
        [("value", DT.DT_FLOAT, (-1,))])}
    return Servable("pair", version, signatures, run)


BUILDERS: dict[str, Callable[[int], Servable]] = {"classifier": classifier, "regressor": regressor, "multi": multi,
                                                  "pair": pair}


def build(name: str, version: int) -> Servable:
    return BUILDERS[name](version)
