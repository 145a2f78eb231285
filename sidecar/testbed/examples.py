"""Classify and Regress: `tf.Example` inputs through a classification or regression signature, as TF Serving.

TF Serving serializes each example (context first, so the example's own features win on a clash), feeds the
batch to the signature's single DT_STRING input and reads `classes`/`scores` or `outputs`
(tensorflow_serving/servables/tensorflow/classifier.cc, regressor.cc, util/json_tensor.cc).

One convenience differs from TF Serving: when a request names no signature and `serving_default` is a predict
signature, the model's first signature of the requested method (`classification` / `regression`) is used, so
`:classify` works on a Keras-exported model without `signature_name`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from sidecar._proto import tf_pb2, tfs_pb2
from sidecar.testbed.model import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, Array, Servable
from sidecar.testbed.status import invalid_argument
from sidecar.testbed.tensors import DT

_KIND = {CLASSIFY_METHOD: "classification", REGRESS_METHOD: "regression"}


def choose_signature(servable: Servable, name: str, method: str) -> tuple[str, tf_pb2.SignatureDef]:
    if not name:
        default = servable.signature_defs.get(DEFAULT_SIGNATURE)
        if default is None or default.method_name != method:
            name = next((key for key, sig in sorted(servable.signature_defs.items()) if sig.method_name == method),
                        DEFAULT_SIGNATURE)
    key, signature = servable.signature(name)
    if signature.method_name != method:
        raise invalid_argument(f"Expected {_KIND[method]} signature method_name to be {method}. "
                               f"Was: {signature.method_name}")
    return key, signature


def serialized_examples(source: tfs_pb2.Input) -> Array:
    """The batch of serialized examples a signature receives (context bytes + example bytes = merged features)."""
    kind = source.WhichOneof("kind")
    if kind == "example_list":
        blobs = [example.SerializeToString() for example in source.example_list.examples]
    elif kind == "example_list_with_context":
        context = source.example_list_with_context.context.SerializeToString()
        blobs = [context + example.SerializeToString() for example in source.example_list_with_context.examples]
    else:
        blobs = []
    if not blobs:
        raise invalid_argument("Input is empty.")
    batch = np.empty(len(blobs), dtype=object)
    batch[:] = blobs
    return batch


def _run(servable: Servable, signature_name: str, method: str,
         source: tfs_pb2.Input) -> tuple[str, dict[str, Array], int]:
    key, signature = choose_signature(servable, signature_name, method)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    (alias, info), = signature.inputs.items()
    if info.dtype != DT.DT_STRING:
        raise invalid_argument(f"Expected input Tensor {alias} to be of type DT_STRING.")
    batch = serialized_examples(source)
    return key, servable.run(key, {alias: batch}), len(batch)


def classify(servable: Servable, signature_name: str,
             source: tfs_pb2.Input) -> tuple[str, list[list[tuple[str, float]]]]:
    """Per example, the (label, score) pairs of every class."""
    key, outputs, size = _run(servable, signature_name, CLASSIFY_METHOD, source)
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise invalid_argument("Expected classification signature outputs to contain classes or scores.")
    width = (classes if classes is not None else scores).reshape(size, -1).shape[1]  # type: ignore[union-attr]
    labels = classes.reshape(size, width) if classes is not None else np.full((size, width), b"", dtype=object)
    values = scores.reshape(size, width) if scores is not None else np.zeros((size, width), np.float32)
    return key, [[(_text(label), float(score)) for label, score in zip(row_labels, row_scores, strict=True)]
                 for row_labels, row_scores in zip(labels, values, strict=True)]


def regress(servable: Servable, signature_name: str, source: tfs_pb2.Input) -> tuple[str, list[float]]:
    key, outputs, size = _run(servable, signature_name, REGRESS_METHOD, source)
    values = outputs.get("outputs")
    if values is None:
        raise invalid_argument("No outputs Tensor found in regression signature outputs.")
    if values.size != size:
        raise invalid_argument(f"Expected output Tensor shape to be [{size}] or [{size},1] but got "
                               f"{list(values.shape)}")
    return key, [float(value) for value in values.reshape(-1)]


def _text(label: Any) -> str:
    return label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)


# --- JSON examples (REST) ---------------------------------------------------------------------------------

def json_type_name(value: Any) -> str:
    """TF Serving's name for a JSON value's type in its error messages."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _add_value(feature: tf_pb2.Feature, name: str, value: Any) -> None:
    kind = feature.WhichOneof("kind")

    def require(wanted: str) -> None:
        if kind not in (None, wanted):
            shown = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[str(kind)]
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {shown}")

    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, int):
        require("int64_list")
        if not -(2**63) <= value < 2**63:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)
    elif isinstance(value, float):
        require("float_list")
        feature.float_list.value.append(value)
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode())
    elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        require("bytes_list")
        feature.bytes_list.value.append(decode_b64(value["b64"]))
    else:
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type_name(value)}")


def decode_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def example_from_json(value: Any) -> tf_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type_name(value)}")
    example = tf_pb2.Example()
    for name, content in value.items():
        feature = tf_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_value(feature, name, item)
        example.features.feature[name].CopyFrom(feature)
    return example


def input_from_json(doc: dict[str, Any], describe: str) -> tfs_pb2.Input:
    """`{"context"?, "examples": [...]}` as a tensorflow.serving.Input; `describe` is the document as TF
    Serving prints it in errors."""
    source = tfs_pb2.Input()
    context = doc.get("context")
    if "context" in doc:
        source.example_list_with_context.context.CopyFrom(example_from_json(context))
    if "examples" not in doc:
        raise invalid_argument(f"JSON Value: {describe} When method is classify, key 'examples' is expected and was "
                               f"not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {describe} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {describe} 'examples' value is an empty array")
    target = (source.example_list_with_context.examples if "context" in doc else source.example_list.examples)
    for item in examples:
        target.add().CopyFrom(example_from_json(item))
    return source
