"""TensorFlow backend: train small Keras models on the generating rules, export SavedModels, serve their signatures.

The export directory has TF Serving's layout (`<dir>/<model>/<version>/saved_model.pb`), so a real
`tensorflow/serving` container can serve the same files. Existing exports are reused, which makes a persistent
`--model-dir` start fast. Classification and regression signatures take serialized `tf.Example`s (input
`inputs`) like TF Serving expects; `tf.saved_model.save` always writes the predict method name, so the export
patches `method_name` to the classify/regress constants afterwards.

TensorFlow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2
from sidecar.testbed import data
from sidecar.testbed.model import CLASSIFY_METHOD, REGRESS_METHOD, Array, Servable
from sidecar.testbed.status import Code, ServingError

MODEL_SIGNATURES_FILE = "saved_model.pb"
_PATCHED_METHODS = {"classification": CLASSIFY_METHOD, "regression": REGRESS_METHOD}


def import_tensorflow() -> Any:
    """Import TensorFlow quietly (its C++ logs go to stderr before Python logging is set up)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def export_model(name: str, version: int, path: Path) -> None:
    """Train model `name` (seeded by version) and write it as a SavedModel at `path` (a version directory)."""
    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(1000 * version + sum(map(ord, name)))
    builders: dict[str, Callable[[Any, Any, int], Any]] = {
        "classifier": _classifier_module, "regressor": _regressor_module, "multi": _multi_module,
        "pair": _pair_module}
    module, signatures = builders[name](tf, keras, version)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # a rename publishes a complete export atomically
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    _patch_method_names(tmp / MODEL_SIGNATURES_FILE)
    try:
        tmp.rename(path)
    except OSError:
        if not (path / MODEL_SIGNATURES_FILE).exists():  # not another process's finished export: retry once
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
    shutil.rmtree(tmp, ignore_errors=True)


def _classifier_module(tf: Any, keras: Any, version: int) -> tuple[Any, dict[str, Any]]:
    features, classes = data.classifier_batch(1500, seed=version)
    model = keras.Sequential([
        keras.Input((4,), name="features"),
        keras.layers.Normalization(mean=data.CLASS_CENTERS.mean(axis=0), variance=data.CLASS_SPREAD**2 + 1.0),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.03), loss="sparse_categorical_crossentropy")
    model.fit(features, classes, epochs=8 + 4 * version, batch_size=100, verbose=0)
    labels = tf.constant([list(data.CLASS_LABELS)])

    def serve(features: Any) -> dict[str, Any]:
        return {"probabilities": model(features, training=False)}

    def classify(inputs: Any) -> dict[str, Any]:
        scores = model(_parse_features(tf, inputs), training=False)
        return {"classes": tf.tile(labels, [tf.shape(scores)[0], 1]), "scores": scores}

    return _module(tf, model), {
        "serving_default": tf.function(serve, input_signature=[_features_spec(tf)]),
        "classification": tf.function(classify, input_signature=[_examples_spec(tf)]),
    }


def _regressor_module(tf: Any, keras: Any, version: int) -> tuple[Any, dict[str, Any]]:
    features, target = data.regressor_batch(1500, seed=version)
    model = keras.Sequential([keras.Input((4,), name="features"), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(features, target, epochs=20 + 5 * version, batch_size=100, verbose=0)

    def serve(features: Any) -> dict[str, Any]:
        return {"value": tf.squeeze(model(features, training=False), axis=-1)}

    def regress(inputs: Any) -> dict[str, Any]:
        return {"outputs": tf.squeeze(model(_parse_features(tf, inputs), training=False), axis=-1)}

    return _module(tf, model), {
        "serving_default": tf.function(serve, input_signature=[_features_spec(tf)]),
        "regression": tf.function(regress, input_signature=[_examples_spec(tf)]),
    }


def _multi_module(tf: Any, keras: Any, version: int) -> tuple[Any, dict[str, Any]]:
    x, _, truth = data.multi_batch(1500, seed=version)
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="binary_crossentropy")
    model.fit(x, truth, epochs=10 + 5 * version, batch_size=100, verbose=0)

    def serve(x: Any, tag: Any) -> dict[str, Any]:
        score = tf.squeeze(model(x, training=False), axis=-1)
        verdict = tf.where(score >= 0.5, tf.constant("high"), tf.constant("low"))
        return {"score": score, "label_bytes": tf.strings.join([tag, verdict], separator=":")}

    specs = [tf.TensorSpec([None, 3], tf.float32, name="x"), tf.TensorSpec([None], tf.string, name="tag")]
    return _module(tf, model), {"serving_default": tf.function(serve, input_signature=specs)}


def _pair_module(tf: Any, keras: Any, version: int) -> tuple[Any, dict[str, Any]]:
    """Two named numeric inputs; least-squares weights (the same fit as the numpy backend's) in TensorFlow."""
    weights, bias = data.fit_pair(version)
    module = tf.Module()
    module.weights = tf.Variable(weights[:, None], name="weights")
    module.bias = tf.Variable(bias, dtype=tf.float32, name="bias")

    def serve(a: Any, b: Any) -> dict[str, Any]:
        x = tf.concat([a, b[:, None]], axis=1)
        return {"value": tf.squeeze(tf.matmul(x, module.weights), axis=-1) + module.bias}

    specs = [tf.TensorSpec([None, 2], tf.float32, name="a"), tf.TensorSpec([None], tf.float32, name="b")]
    return module, {"serving_default": tf.function(serve, input_signature=specs)}


def _module(tf: Any, model: Any) -> Any:
    """The object saved: it tracks the model's variables."""
    module = tf.Module()
    module.model = model
    return module


def _features_spec(tf: Any) -> Any:
    return tf.TensorSpec([None, 4], tf.float32, name="features")


def _examples_spec(tf: Any) -> Any:
    return tf.TensorSpec([None], tf.string, name="inputs")


def _parse_features(tf: Any, serialized: Any) -> Any:
    """Serialized tf.Examples with a `features` float list of 4 values -> float32 [n, 4]."""
    return tf.io.parse_example(serialized, {"features": tf.io.FixedLenFeature([4], tf.float32)})["features"]


def _patch_method_names(pb_path: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    for meta_graph in saved.meta_graphs:
        for key, method in _PATCHED_METHODS.items():
            if key in meta_graph.signature_def:
                meta_graph.signature_def[key].method_name = method
    pb_path.write_bytes(saved.SerializeToString())


def read_signature_defs(path: Path) -> dict[str, tf_pb2.SignatureDef]:
    """The SignatureDefs of a SavedModel as our wire protos (TF Serving reports exactly these as metadata)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / MODEL_SIGNATURES_FILE).read_bytes())
    signatures = saved.meta_graphs[0].signature_def
    return {key: tf_pb2.SignatureDef.FromString(signatures[key].SerializeToString())
            for key in sorted(signatures) if not key.startswith("__")}


def load_servable(name: str, version: int, path: Path) -> Servable:
    """Load a SavedModel and serve its signatures through `tf.saved_model.load`."""
    tf = import_tensorflow()
    loaded = tf.saved_model.load(str(path))
    signature_defs = read_signature_defs(path)
    functions = {key: loaded.signatures[key] for key in signature_defs}

    def run(signature_key: str, inputs: Mapping[str, Array]) -> dict[str, Array]:
        tensors = {alias: tf.constant(value) for alias, value in inputs.items()}
        try:
            outputs = functions[signature_key](**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(Code(exc.error_code), exc.message) from exc
        except (TypeError, ValueError) as exc:
            raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from exc
        return {alias: _to_numpy(tensor) for alias, tensor in outputs.items()}

    run.loaded = loaded  # type: ignore[attr-defined]  # keeps the SavedModel's resources alive
    return Servable(name, version, signature_defs, run)


def _to_numpy(tensor: Any) -> Array:
    value = tensor.numpy()
    return value if isinstance(value, np.ndarray) else np.asarray(value)
