"""methods: every TF Serving and Open Inference Protocol method has a bounded metric label; captured methods
are exactly Predict, Classify, Regress and ModelInfer; unknown paths become streamed `other` calls."""

from __future__ import annotations

import pytest

from sidecar.proxy.grpc.methods import KNOWN_METHODS, OTHER, describe
from sidecar.proxy.grpc.peek import ModelRef

TFS = "/tensorflow.serving.PredictionService/"
MODELS = "/tensorflow.serving.ModelService/"
V2 = "/inference.GRPCInferenceService/"


@pytest.mark.parametrize(("path", "label", "api"), [
    (TFS + "Predict", "predict", "tfserving"),
    (TFS + "Classify", "classify", "tfserving"),
    (TFS + "Regress", "regress", "tfserving"),
    (TFS + "MultiInference", "multiinference", "tfserving"),
    (TFS + "GetModelMetadata", "metadata", "tfserving"),
    (MODELS + "GetModelStatus", "status", "tfserving"),
    (MODELS + "HandleReloadConfigRequest", "reload", "tfserving"),
    (V2 + "ModelInfer", "infer", "v2"),
    (V2 + "ModelMetadata", "metadata", "v2"),
    (V2 + "ModelReady", "ready", "v2"),
    (V2 + "ServerLive", "serverlive", "v2"),
    (V2 + "ServerReady", "serverready", "v2"),
    (V2 + "ServerMetadata", "servermetadata", "v2"),
    (V2 + "RepositoryIndex", "repositoryindex", "v2"),
])
def test_known_unary_methods_have_their_labels(path: str, label: str, api: str) -> None:
    method = describe(path)
    assert (method.label, method.api, method.unary) == (label, api, True)


def test_only_predict_classify_regress_and_infer_are_captured() -> None:
    captured = {method.label for method in KNOWN_METHODS.values() if method.captured}
    assert captured == {"predict", "classify", "regress", "infer"}


def test_stream_infer_is_forwarded_as_a_stream() -> None:
    method = describe(V2 + "ModelStreamInfer")
    assert (method.unary, method.label, method.captured) == (False, "modelstreaminfer", False)


@pytest.mark.parametrize("path", ["/grpc.health.v1.Health/Check", TFS + "Unheard", "/x/y/z", "nonsense"])
def test_unknown_paths_are_streamed_under_the_other_label(path: str) -> None:
    method = describe(path)
    assert (method.label, method.unary, method.captured, method.peek) == (OTHER, False, False, None)
    assert method.path == path


def test_service_and_method_names_follow_the_path() -> None:
    method = describe(TFS + "Predict")
    assert (method.service, method.name, method.span_name) == (
        "tensorflow.serving.PredictionService", "Predict", "tensorflow.serving.PredictionService/Predict")
    assert (describe("/grpc.health.v1.Health/Check").service, describe("/grpc.health.v1.Health/Check").name) == (
        "grpc.health.v1.Health", "Check")


def test_labels_are_a_small_fixed_set() -> None:
    labels = {method.label for method in KNOWN_METHODS.values()} | {OTHER}
    assert len(labels) <= 32
    assert all(label == label.lower() and label.isalnum() for label in labels)


def test_model_reading_methods_read_their_request_layout() -> None:
    spec = b"\x0a\x03\x0a\x01m"  # model_spec { name: "m" }
    assert describe(TFS + "Predict").peek(spec) == ModelRef("m", "", "")  # type: ignore[misc]
    assert describe(V2 + "ModelInfer").peek(b"\x0a\x01m\x12\x013") == ModelRef("m", "3", "")  # type: ignore[misc]
    assert describe(MODELS + "HandleReloadConfigRequest").peek is None
