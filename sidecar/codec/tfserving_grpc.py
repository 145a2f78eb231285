"""TF Serving gRPC messages (PredictionService Predict, Classify, Regress) to arrays.

Parsed with the wire-compatible subset in `sidecar._proto` (same bytes as tensorflow_serving.apis).
"""

from __future__ import annotations

import numpy as np

from sidecar._proto import tfs_pb2
from sidecar.codec.arrays import FLOAT64, object_array
from sidecar.codec.errors import DecodeError
from sidecar.codec.examples import example_row, feature_columns, merged_rows
from sidecar.codec.exchange import DEFAULT_OUTPUT, SCORES_OUTPUT, Exchange, make_exchange
from sidecar.codec.messages import parse
from sidecar.codec.tensors import tensor_to_array


def decode_predict(request: bytes, response: bytes | None) -> Exchange:
    inputs = {name: tensor_to_array(tensor) for name, tensor in parse(tfs_pb2.PredictRequest, request).inputs.items()}
    outputs = {}
    if response is not None:
        message = parse(tfs_pb2.PredictResponse, response)
        outputs = {name: tensor_to_array(tensor) for name, tensor in message.outputs.items()}
    return make_exchange(inputs, outputs, "predict")


def decode_classify(request: bytes, response: bytes | None) -> Exchange:
    inputs = input_columns(parse(tfs_pb2.ClassificationRequest, request).input)
    if response is None:
        return make_exchange(inputs, {}, "classify")
    result = parse(tfs_pb2.ClassificationResponse, response).result
    counts = {len(classifications.classes) for classifications in result.classifications}
    if len(counts) > 1:
        raise DecodeError("shape", "classifications differ in length")
    shape = (len(result.classifications), counts.pop() if counts else 0)
    classes = [cls for classifications in result.classifications for cls in classifications.classes]
    labels = object_array([cls.label for cls in classes]).reshape(shape)
    scores = np.asarray([cls.score for cls in classes], dtype=FLOAT64).reshape(shape)
    return make_exchange(inputs, {SCORES_OUTPUT: scores}, "classify", labels)


def decode_regress(request: bytes, response: bytes | None) -> Exchange:
    inputs = input_columns(parse(tfs_pb2.RegressionRequest, request).input)
    if response is None:
        return make_exchange(inputs, {}, "regress")
    result = parse(tfs_pb2.RegressionResponse, response).result
    values = np.asarray([regression.value for regression in result.regressions], dtype=FLOAT64)
    return make_exchange(inputs, {DEFAULT_OUTPUT: values}, "regress")


def input_columns(message: tfs_pb2.Input) -> dict[str, np.ndarray]:
    """tensorflow.serving.Input (example_list or example_list_with_context) to feature columns."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        examples, context = message.example_list.examples, None
    elif kind == "example_list_with_context":
        examples = message.example_list_with_context.examples
        context = example_row(message.example_list_with_context.context)
    else:
        raise DecodeError("missing", "the request has no input examples")
    if not examples:
        raise DecodeError("empty", "zero examples")
    return feature_columns(merged_rows((example_row(example) for example in examples), context))
