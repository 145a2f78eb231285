"""peek reads the addressed model from serialized requests built with the official tensorflow-serving-api
classes (and the Open Inference Protocol's messages), skips everything else, and never raises on bad bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sidecar._proto import v2_pb2
from sidecar.proxy.grpc.peek import (
    MAX_FIELDS,
    MAX_NAME_BYTES,
    NO_MODEL,
    ModelRef,
    peek_model_spec,
    peek_multi_inference,
    peek_v2_model,
)

tf = pytest.importorskip("tensorflow")
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)


def predict(name: str = "", version: int | None = None, label: str | None = None, rows: int = 2) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["features"].CopyFrom(tf.make_tensor_proto([[0.5] * 4] * rows, dtype=tf.float32))
    request.output_filter.append("probabilities")
    return request


def test_predict_request_gives_name_and_version() -> None:
    assert peek_model_spec(predict("classifier", version=2).SerializeToString()) == ModelRef("classifier", "2", "")


def test_predict_request_gives_the_version_label() -> None:
    assert peek_model_spec(predict("classifier", label="canary").SerializeToString()) == ModelRef(
        "classifier", "", "canary")


def test_version_without_value_is_zero_and_no_version_is_empty() -> None:
    request = predict("m")
    request.model_spec.version.SetInParent()
    assert peek_model_spec(request.SerializeToString()) == ModelRef("m", "0", "")
    assert peek_model_spec(predict("m").SerializeToString()) == ModelRef("m", "", "")


@pytest.mark.parametrize("version", [1, 2**40, 2**63 - 1, -1, -(2**63)])
def test_int64_versions_round_trip_including_negative_values(version: int) -> None:
    assert peek_model_spec(predict("m", version=version).SerializeToString()).version == str(version)


@pytest.mark.parametrize("build", [
    lambda: classification_pb2.ClassificationRequest(),
    lambda: regression_pb2.RegressionRequest(),
    lambda: get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
    lambda: get_model_status_pb2.GetModelStatusRequest(),
], ids=["classify", "regress", "metadata", "status"])
def test_every_model_spec_request_type_is_read(build: Any) -> None:
    request = build()
    request.model_spec.name = "regressor"
    request.model_spec.version.value = 7
    if hasattr(request, "input"):
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.extend([1.0, 2.0])
    assert peek_model_spec(request.SerializeToString()) == ModelRef("regressor", "7", "")


def test_multi_inference_reads_the_first_tasks_model_spec() -> None:
    request = inference_pb2.MultiInferenceRequest()
    first = request.tasks.add(method_name="tensorflow/serving/classify")
    first.model_spec.name = "multi"
    first.model_spec.version_label = "stable"
    second = request.tasks.add(method_name="tensorflow/serving/regress")
    second.model_spec.name = "other"
    request.input.example_list.examples.add()
    assert peek_multi_inference(request.SerializeToString()) == ModelRef("multi", "", "stable")
    assert peek_multi_inference(inference_pb2.MultiInferenceRequest().SerializeToString()) == NO_MODEL


def test_model_spec_found_after_large_fields_without_reading_them() -> None:
    spec_only = predict_pb2.PredictRequest()
    spec_only.model_spec.name = "late"
    spec_only.model_spec.version.value = 3
    inputs_only = predict("", rows=300_000)  # ~4.8 MB tensor_content
    inputs_only.ClearField("model_spec")
    message = inputs_only.SerializeToString() + spec_only.SerializeToString()  # concatenation = merged message
    assert len(message) > 4_000_000
    assert peek_model_spec(message) == ModelRef("late", "3", "")


def test_ten_megabyte_request_is_read_from_its_first_bytes() -> None:
    message = predict("big", version=1, rows=700_000).SerializeToString()
    assert len(message) > 10_000_000
    assert peek_model_spec(message) == ModelRef("big", "1", "")


def test_v2_infer_request_gives_model_name_and_version() -> None:
    request = v2_pb2.ModelInferRequest(model_name="classifier", model_version="1", id="req-1")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([0.1, 0.2, 0.3, 0.4])
    request.raw_input_contents.append(b"\x00" * 16)
    assert peek_v2_model(request.SerializeToString()) == ModelRef("classifier", "1", "")
    assert peek_v2_model(v2_pb2.ModelInferRequest(model_name="m").SerializeToString()) == ModelRef("m", "", "")


def test_v2_ready_and_metadata_requests_share_the_layout() -> None:
    assert peek_v2_model(v2_pb2.ModelReadyRequest(name="r", version="2").SerializeToString()) == ModelRef(
        "r", "2", "")


def test_unknown_and_fixed_width_fields_are_skipped() -> None:
    spec = predict_pb2.PredictRequest()
    spec.model_spec.name = "m"
    unknown = (b"\x79" + b"\x00" * 8  # field 15, fixed64
               + b"\x85\x01" + b"\x00" * 4  # field 16, fixed32
               + b"\x88\x01\x96\x01")  # field 17, varint 150
    assert peek_model_spec(unknown + spec.SerializeToString()) == ModelRef("m", "", "")
    assert peek_v2_model(unknown + v2_pb2.ModelInferRequest(model_name="v").SerializeToString()).name == "v"


def test_empty_message_has_no_model() -> None:
    assert peek_model_spec(b"") == NO_MODEL
    assert peek_multi_inference(b"") == NO_MODEL
    assert peek_v2_model(b"") == NO_MODEL


def test_every_truncation_of_a_valid_request_is_handled_without_raising() -> None:
    full = predict("classifier", version=5).SerializeToString()
    v2 = v2_pb2.ModelInferRequest(model_name="classifier", model_version="5").SerializeToString()
    for cut in range(len(full)):
        result = peek_model_spec(full[:cut])
        assert isinstance(result, ModelRef)
        assert result.name in ("", "classifier")
    for cut in range(len(v2)):
        assert peek_v2_model(v2[:cut]).name in ("", "classifier")


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        for peek in (peek_model_spec, peek_multi_inference, peek_v2_model):
            assert isinstance(peek(blob), ModelRef)


@pytest.mark.parametrize("blob", [
    b"\x0a\xff\xff\xff\xff\x0f",  # length far beyond the message
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # varint longer than 64 bits
    b"\x00\x01",  # field number 0
    b"\x0b\x0c",  # group wire types
    b"\x0f",  # wire type 7
], ids=["long-length", "long-varint", "field-zero", "group", "bad-wire-type"])
def test_malformed_bytes_give_empty_strings(blob: bytes) -> None:
    assert peek_model_spec(blob) == NO_MODEL
    assert peek_multi_inference(blob) == NO_MODEL
    assert peek_v2_model(blob) == NO_MODEL


def test_model_spec_whose_fields_overrun_it_is_malformed() -> None:
    nested_overrun = b"\x0a\x02\x0a\x05ab"  # model_spec of 2 bytes whose name claims 5
    assert peek_model_spec(nested_overrun) == NO_MODEL
    assert peek_multi_inference(b"\x0a\x04" + nested_overrun) == NO_MODEL


def test_invalid_utf8_name_is_replaced_not_raised() -> None:
    message = b"\x0a\x04\x0a\x02\xff\xfe"  # model_spec { name: b"\xff\xfe" }
    assert peek_model_spec(message).name == "\ufffd\ufffd"


def test_implausibly_long_names_are_ignored() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "x" * (MAX_NAME_BYTES + 1)
    assert peek_model_spec(request.SerializeToString()).name == ""
    assert peek_v2_model(v2_pb2.ModelInferRequest(model_name="y" * (MAX_NAME_BYTES + 1)).SerializeToString()) \
        == NO_MODEL


def test_work_is_bounded_by_the_field_limit() -> None:
    filler = b"\x18\x01" * (MAX_FIELDS + 1)  # field 3 varints before the model spec
    spec = predict_pb2.PredictRequest()
    spec.model_spec.name = "hidden"
    assert peek_model_spec(filler + spec.SerializeToString()) == NO_MODEL
    assert peek_model_spec(filler[: 2 * (MAX_FIELDS - 1)] + spec.SerializeToString()).name == "hidden"
