"""What the shadow is asked: REST paths and gRPC requests naming another model or version, read back by protobuf."""

from __future__ import annotations

import pytest
from tensorflow_serving.apis import predict_pb2

from sidecar._proto import v2_pb2
from sidecar.shadow.requests import Unsupported, grpc_method, grpc_request, naming, rest_path


def test_nothing_changes_without_a_rename_or_a_version() -> None:
    name = naming("classifier", "1", "", None, "")
    assert not name.changed
    assert rest_path("tfserving", "predict", name) == "/v1/models/classifier/versions/1:predict"
    assert grpc_request("tfserving", b"\x0a\x02\x0a\x00", name) == b"\x0a\x02\x0a\x00"


def test_a_renamed_model_is_asked_without_the_requests_version_unless_one_is_configured() -> None:
    assert rest_path("tfserving", "classify", naming("iris", "3", "", "iris_next", "")) == (
        "/v1/models/iris_next:classify")
    assert rest_path("tfserving", "predict", naming("iris", "", "stable", None, "canary")) == (
        "/v1/models/iris/labels/canary:predict")
    assert rest_path("v2", "infer", naming("iris", "", "", "iris next", "7")) == (
        "/v2/models/iris%20next/versions/7/infer")
    with pytest.raises(Unsupported):
        rest_path("tfserving", "metadata", naming("iris", "", "", None, ""))
    with pytest.raises(Unsupported):
        grpc_method("tfserving", "multiinference")


def test_a_tf_serving_request_gets_the_shadows_model_spec_and_keeps_its_tensors_and_signature() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "classifier"
    request.model_spec.version_label = "stable"
    request.model_spec.signature_name = "serving_default"
    request.inputs["features"].float_val.extend([1.0, 2.0, 3.0])
    request.inputs["features"].tensor_shape.dim.add().size = 3
    request.output_filter.append("probabilities")
    for asked, version, label in (("2", 2, ""), ("canary", 0, "canary")):
        rewritten = predict_pb2.PredictRequest.FromString(grpc_request(
            "tfserving", request.SerializeToString(), naming("classifier", "", "stable", "classifier_next", asked)))
        assert rewritten.model_spec.name == "classifier_next"
        assert rewritten.model_spec.version.value == version
        assert rewritten.model_spec.version_label == label
        assert rewritten.model_spec.signature_name == "serving_default"
        assert rewritten.inputs == request.inputs and list(rewritten.output_filter) == ["probabilities"]


def test_an_open_inference_request_gets_the_shadows_name_and_version() -> None:
    request = v2_pb2.ModelInferRequest(model_name="iris", model_version="1", id="call-1")
    request.raw_input_contents.append(b"\x00" * 16)
    rewritten = v2_pb2.ModelInferRequest.FromString(grpc_request(
        "v2", request.SerializeToString(), naming("iris", "1", "", "iris_next", "")))
    assert (rewritten.model_name, rewritten.model_version, rewritten.id) == ("iris_next", "", "call-1")
    assert list(rewritten.raw_input_contents) == [b"\x00" * 16]


def test_malformed_bytes_are_refused_not_sent() -> None:
    with pytest.raises(Unsupported):
        grpc_request("tfserving", b"\x0a\xff\xff", naming("a", "", "", "b", ""))
