"""Redaction replaces named input fields in JSON and protobuf request bodies, and refuses what it cannot parse."""

from __future__ import annotations

import json
import struct

import pytest

from sidecar._proto import tf_pb2, tfs_pb2, v2_pb2
from sidecar.export.redact import REDACTED, RedactionError, redact_json, redact_protobuf

FIELDS = frozenset({"ssn", "name"})


def test_row_objects_in_instances_are_redacted() -> None:
    body = json.dumps({"instances": [{"ssn": "123", "age": 40}, {"ssn": "456", "age": 41}]}).encode()
    redacted, count = redact_json(body, FIELDS)
    assert count == 2
    assert json.loads(redacted) == {"instances": [{"ssn": REDACTED, "age": 40}, {"ssn": REDACTED, "age": 41}]}


def test_columnar_inputs_mapping_is_redacted() -> None:
    body = json.dumps({"signature_name": "s", "inputs": {"name": ["ann", "bob"], "age": [40, 41]}}).encode()
    redacted, count = redact_json(body, FIELDS)
    assert count == 1
    assert json.loads(redacted) == {"signature_name": "s", "inputs": {"name": REDACTED, "age": [40, 41]}}


def test_open_inference_protocol_inputs_have_their_data_redacted() -> None:
    body = json.dumps({"inputs": [{"name": "ssn", "shape": [1], "datatype": "BYTES", "data": ["123"]},
                                  {"name": "age", "shape": [1], "datatype": "INT32", "data": [40]}]}).encode()
    redacted, count = redact_json(body, FIELDS)
    document = json.loads(redacted)
    assert count == 1
    assert document["inputs"][0] == {"name": "ssn", "shape": [1], "datatype": "BYTES", "data": REDACTED}
    assert document["inputs"][1]["data"] == [40]


def test_classify_examples_and_context_are_redacted() -> None:
    body = json.dumps({"context": {"name": "ann"}, "examples": [{"ssn": "1", "x": 1.0}, {"x": 2.0}]}).encode()
    redacted, count = redact_json(body, FIELDS)
    assert count == 2
    assert json.loads(redacted) == {"context": {"name": REDACTED}, "examples": [{"ssn": REDACTED, "x": 1.0},
                                                                                {"x": 2.0}]}


def test_bodies_without_named_fields_come_back_unchanged() -> None:
    body = b'{"instances": [[1.0, 2.0]], "x": NaN}'
    assert redact_json(body, FIELDS) == (body, 0)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_json_that_does_not_parse_as_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(RedactionError):
        redact_json(body, FIELDS)


def test_predict_request_inputs_become_a_redacted_string_tensor_of_the_same_shape() -> None:
    request = tfs_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["ssn"].dtype = tf_pb2.DT_INT64
    request.inputs["ssn"].tensor_shape.dim.add().size = 2
    request.inputs["ssn"].int64_val.extend([123, 456])
    request.inputs["x"].dtype = tf_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(1.5)
    redacted, count = redact_protobuf(request.SerializeToString(), "tfserving", "predict", FIELDS)
    parsed = tfs_pb2.PredictRequest.FromString(redacted)
    assert count == 1
    assert parsed.inputs["ssn"].dtype == tf_pb2.DT_STRING
    assert [d.size for d in parsed.inputs["ssn"].tensor_shape.dim] == [2]
    assert list(parsed.inputs["ssn"].string_val) == [REDACTED.encode()]
    assert not parsed.inputs["ssn"].int64_val
    assert parsed.inputs["x"] == request.inputs["x"]
    assert parsed.model_spec.name == "m"


def test_predict_redaction_is_wire_compatible_with_the_official_client() -> None:
    pytest.importorskip("tensorflow_serving")
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    official = predict_pb2.PredictRequest()
    official.model_spec.name = "half_plus_two"
    official.inputs["ssn"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"123-45"]))
    official.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0]))
    official.inputs["x"].tensor_shape.dim.add().size = 2
    redacted, count = redact_protobuf(official.SerializeToString(), "tfserving", "predict", FIELDS)
    back = predict_pb2.PredictRequest.FromString(redacted)
    assert count == 1
    assert list(back.inputs["ssn"].string_val) == [b"[REDACTED]"]
    assert back.inputs["x"] == official.inputs["x"]
    assert back.model_spec.name == "half_plus_two"


@pytest.mark.parametrize("method", ["classify", "regress"])
def test_example_features_are_redacted_in_classify_and_regress(method: str) -> None:
    request = tfs_pb2.ClassificationRequest() if method == "classify" else tfs_pb2.RegressionRequest()
    listing = request.input.example_list_with_context
    example = listing.examples.add()
    example.features.feature["ssn"].int64_list.value.append(123)
    example.features.feature["x"].float_list.value.append(1.0)
    listing.context.features.feature["name"].bytes_list.value.append(b"ann")
    redacted, count = redact_protobuf(request.SerializeToString(), "tfserving", method, FIELDS)
    parsed = type(request).FromString(redacted)
    assert count == 2
    features = parsed.input.example_list_with_context.examples[0].features.feature
    assert list(features["ssn"].bytes_list.value) == [b"[REDACTED]"]
    assert list(features["x"].float_list.value) == [1.0]
    context = parsed.input.example_list_with_context.context.features.feature
    assert list(context["name"].bytes_list.value) == [b"[REDACTED]"]


def test_model_infer_inputs_are_redacted_in_raw_and_typed_contents() -> None:
    request = v2_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="ssn", datatype="INT64", shape=[2])
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.extend([struct.pack("<2q", 1, 2), struct.pack("<f", 1.0)])
    redacted, count = redact_protobuf(request.SerializeToString(), "v2", "infer", FIELDS)
    parsed = v2_pb2.ModelInferRequest.FromString(redacted)
    assert count == 1
    assert (parsed.inputs[0].datatype, list(parsed.inputs[0].shape)) == ("BYTES", [1])
    assert parsed.raw_input_contents[0] == struct.pack("<I", 10) + b"[REDACTED]"
    assert parsed.raw_input_contents[1] == struct.pack("<f", 1.0)

    typed = v2_pb2.ModelInferRequest(model_name="m")
    typed.inputs.add(name="name", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"ann")
    redacted, count = redact_protobuf(typed.SerializeToString(), "v2", "infer", FIELDS)
    assert count == 1
    assert list(v2_pb2.ModelInferRequest.FromString(redacted).inputs[0].contents.bytes_contents) == [b"[REDACTED]"]


def test_unknown_messages_and_garbage_are_refused() -> None:
    with pytest.raises(RedactionError, match="no redaction"):
        redact_protobuf(b"", "tfserving", "multiinference", FIELDS)
    with pytest.raises(RedactionError, match="does not parse"):
        redact_protobuf(b"\xff\xff\xff\xff", "tfserving", "predict", FIELDS)
