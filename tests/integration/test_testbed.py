"""The testbed speaks TF Serving's wire protocols: the official tensorflow-serving-api client and plain HTTP against
one real testbed process (Keras models exported as SavedModels, served through their signatures)."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import ClientSession

from sidecar._proto import tf_pb2, v2_pb2
from sidecar.testbed import data, numpy_models
from sidecar.testbed.tensors import shape_of
from tests.support.testbed import TestbedProcess

tf = pytest.importorskip("tensorflow")
classification_pb2 = pytest.importorskip("tensorflow_serving.apis.classification_pb2")
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

BIG = 256 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]


@pytest.fixture(scope="module")
def channel(testbed: TestbedProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(testbed.grpc_target, options=CHANNEL_OPTIONS) as chan:
        yield chan


@pytest.fixture(scope="module")
def prediction(channel: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(model: str, **inputs: Any) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def example(features: np.ndarray) -> Any:
    return tf.train.Example(features=tf.train.Features(feature={
        "features": tf.train.Feature(float_list=tf.train.FloatList(value=features.tolist()))}))


# --- gRPC, official client ------------------------------------------------------------------------------------

def test_grpc_predict_serves_the_latest_version_of_a_trained_classifier(prediction: Any) -> None:
    features, truth = data.classifier_batch(600, seed=123)
    response = prediction.Predict(predict_request("classifier", features=features), 30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (600, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == truth).mean() > 0.85
    assert response.model_spec.name == "classifier"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_answers_with_typed_fields_like_tf_serving(prediction: Any) -> None:
    features, _ = data.classifier_batch(2, seed=1)
    output = prediction.Predict(predict_request("classifier", features=features), 30).outputs["probabilities"]
    assert output.tensor_content == b""
    assert len(output.float_val) == 6
    assert [dim.size for dim in output.tensor_shape.dim] == [2, 3]


def test_grpc_reads_typed_fields_and_broadcasts_a_single_value(prediction: Any) -> None:
    full = predict_request("classifier", features=np.full((3, 4), 5.5, np.float32))
    broadcast = predict_pb2.PredictRequest()
    broadcast.model_spec.name = "classifier"
    tensor = broadcast.inputs["features"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.add(size=3)
    tensor.tensor_shape.dim.add(size=4)
    tensor.float_val.append(5.5)
    assert full.inputs["features"].tensor_content  # make_tensor_proto packs bytes
    expected = tf.make_ndarray(prediction.Predict(full, 30).outputs["probabilities"])
    got = tf.make_ndarray(prediction.Predict(broadcast, 30).outputs["probabilities"])
    np.testing.assert_array_equal(got, expected)


def test_grpc_version_label_selects_its_version(prediction: Any) -> None:
    request = predict_request("classifier", features=np.zeros((1, 4), np.float32))
    request.model_spec.version_label = "stable"
    assert prediction.Predict(request, 30).model_spec.version.value == 1
    request.model_spec.version.value = 2
    assert prediction.Predict(request, 30).model_spec.version.value == 2


def test_grpc_multi_model_takes_named_inputs_and_returns_two_outputs(prediction: Any) -> None:
    x, tags, truth = data.multi_batch(50, seed=5)
    response = prediction.Predict(predict_request("multi", x=x, tag=tags.astype(bytes)), 30)
    score = tf.make_ndarray(response.outputs["score"])
    labels = tf.make_ndarray(response.outputs["label_bytes"])
    assert score.shape == (50,) and labels.shape == (50,)
    assert ((score >= 0.5) == (truth == 1)).mean() > 0.9
    for tag, value, label in zip(tags, score, labels, strict=True):
        assert label == tag + (b":high" if value >= 0.5 else b":low")


def test_grpc_output_filter_returns_only_the_named_outputs(prediction: Any) -> None:
    x, tags, _ = data.multi_batch(3, seed=5)
    request = predict_request("multi", x=x, tag=tags.astype(bytes))
    request.output_filter.append("score")
    assert set(prediction.Predict(request, 30).outputs) == {"score"}


def test_grpc_classify_returns_labels_and_scores_of_the_classification_signature(prediction: Any) -> None:
    features, _ = data.classifier_batch(4, seed=9)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.input.example_list.examples.extend(example(row) for row in features)
    response = prediction.Classify(request, 30)
    probabilities = tf.make_ndarray(prediction.Predict(predict_request("classifier", features=features), 30)
                                    .outputs["probabilities"])
    assert response.model_spec.signature_name == "classification"
    assert len(response.result.classifications) == 4
    for row, expected in zip(response.result.classifications, probabilities, strict=True):
        assert [c.label for c in row.classes] == ["0", "1", "2"]
        np.testing.assert_allclose([c.score for c in row.classes], expected, rtol=1e-5)


def test_grpc_classify_merges_context_features_into_each_example(prediction: Any) -> None:
    features, _ = data.classifier_batch(1, seed=9)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "classifier"
    request.input.example_list_with_context.context.CopyFrom(example(features[0]))
    request.input.example_list_with_context.examples.add()
    request.input.example_list_with_context.examples.add()
    response = prediction.Classify(request, 30)
    assert len(response.result.classifications) == 2


def test_grpc_regress_predicts_the_generating_rule(prediction: Any) -> None:
    features, _ = data.regressor_batch(20, seed=4)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "regressor"
    request.input.example_list.examples.extend(example(row) for row in features)
    response = prediction.Regress(request, 30)
    values = np.array([r.value for r in response.result.regressions])
    assert response.model_spec.signature_name == "regression"
    assert np.abs(values - data.regressor_target(features)).mean() < 0.5


def test_grpc_metadata_unpacks_with_the_official_signature_def_map(prediction: Any) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "multi"
    request.metadata_field.append("signature_def")
    response = prediction.GetModelMetadata(request, 30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert set(serving.inputs) == {"x", "tag"}
    assert set(serving.outputs) == {"score", "label_bytes"}
    assert serving.inputs["tag"].dtype == tf.string.as_datatype_enum
    assert response.model_spec.version.value == 2


def test_grpc_model_status_lists_available_versions_newest_first(channel: grpc.Channel) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "regressor"
    response = stub.GetModelStatus(request, 30)
    assert [s.version for s in response.model_version_status] == [2, 1]
    assert all(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in response.model_version_status)


@pytest.mark.parametrize(("change", "code", "message"), [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(classifier, 9)"),
    (lambda r: setattr(r.model_spec, "version_label", "nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0])), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 2!=1"),
    (lambda r: r.inputs["features"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 5), np.float32))),
     grpc.StatusCode.INVALID_ARGUMENT, "input tensor features has shape [2,5]"),
    (lambda r: r.inputs["features"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 4), np.int64))),
     grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but int64 is provided"),
])
def test_grpc_errors_carry_tf_serving_codes_and_messages(prediction: Any, change: Any, code: grpc.StatusCode,
                                                         message: str) -> None:
    request = predict_request("classifier", features=np.zeros((2, 4), np.float32))
    change(request)
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(request, 30)
    assert caught.value.code() == code
    assert message in caught.value.details()


def test_grpc_multi_inference_is_unimplemented(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/tensorflow.serving.PredictionService/MultiInference")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"", timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_accepts_messages_over_four_mebibytes(prediction: Any) -> None:
    features = np.random.default_rng(0).normal(size=(300_000, 4)).astype(np.float32)  # 4.8 MB as raw bytes
    response = prediction.Predict(predict_request("classifier", features=features), 60)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (300_000, 3)


def test_grpc_delay_metadata_holds_the_answer_past_a_deadline(prediction: Any) -> None:
    request = predict_request("classifier", features=np.zeros((1, 4), np.float32))
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(request, 0.3, metadata=[("x-testbed-delay-ms", "3000")])
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_echoes_traceparent_as_trailing_metadata(prediction: Any) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    request = predict_request("classifier", features=np.zeros((1, 4), np.float32))
    _, call = prediction.Predict.with_call(request, 30, metadata=[("traceparent", traceparent)])
    assert ("x-testbed-traceparent", traceparent) in tuple(call.trailing_metadata())


def test_grpc_v2_model_infer_answers_raw_inputs_with_raw_outputs(channel: grpc.Channel) -> None:
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=v2_pb2.ModelInferRequest.SerializeToString,
                                response_deserializer=v2_pb2.ModelInferResponse.FromString)
    features, _ = data.classifier_batch(3, seed=2)
    request = v2_pb2.ModelInferRequest(model_name="classifier", model_version="1", id="r1")
    request.inputs.add(name="features", datatype="FP32", shape=[3, 4])
    request.raw_input_contents.append(features.tobytes())
    response = infer(request, timeout=30)
    assert (response.model_name, response.model_version, response.id) == ("classifier", "1", "r1")
    assert response.outputs[0].name == "probabilities" and list(response.outputs[0].shape) == [3, 3]
    probabilities = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# --- REST -----------------------------------------------------------------------------------------------------

async def post(testbed: TestbedProcess, path: str, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    data_bytes = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with ClientSession() as session, session.post(testbed.rest_url + path, data=data_bytes, **kwargs) as r:
        text = await r.text()
        return r.status, (json.loads(text) if r.content_type == "application/json" else text), r.headers


async def get(testbed: TestbedProcess, path: str) -> tuple[int, Any]:
    async with ClientSession() as session, session.get(testbed.rest_url + path) as response:
        text = await response.text()
        return response.status, json.loads(text) if response.content_type == "application/json" else text


async def test_rest_row_and_columnar_predict_use_predictions_and_outputs(testbed: TestbedProcess) -> None:
    features, truth = data.classifier_batch(200, seed=77)
    status, row, headers = await post(testbed, "/v1/models/classifier:predict", {"instances": features.tolist()})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert (np.array(row["predictions"]).argmax(axis=1) == truth).mean() > 0.85
    status, columnar, _ = await post(testbed, "/v1/models/classifier/versions/2:predict", {"inputs": features.tolist()})
    assert status == 200
    np.testing.assert_allclose(columnar["outputs"], row["predictions"], rtol=1e-6)


async def test_rest_multi_rows_are_objects_with_b64_bytes_outputs(testbed: TestbedProcess) -> None:
    tag = b"\x00\xffraw"
    body = {"instances": [{"x": [1.0, 2.0, 0.5], "tag": {"b64": base64.b64encode(tag).decode()}},
                          {"x": [-1.0, -2.0, 0.5], "tag": "beta"}]}
    status, result, _ = await post(testbed, "/v1/models/multi:predict", body)
    assert status == 200
    first, second = result["predictions"]
    assert set(first) == {"score", "label_bytes"}
    assert base64.b64decode(first["label_bytes"]["b64"]) == tag + b":high"
    assert base64.b64decode(second["label_bytes"]["b64"]) == b"beta:low"


async def test_rest_accepts_nan_and_infinity_tokens(testbed: TestbedProcess) -> None:
    body = b'{"inputs": {"x": [[NaN, 1.0, Infinity], [-Infinity, 0, 1]], "tag": ["a", "b"]}}'
    status, result, _ = await post(testbed, "/v1/models/multi:predict", body)
    assert status == 200
    assert len(result["outputs"]["score"]) == 2


async def test_rest_decompresses_gzip_request_bodies(testbed: TestbedProcess) -> None:
    body = gzip.compress(json.dumps({"instances": [[5.0, 3.4, 1.5, 0.25]]}).encode())
    status, result, _ = await post(testbed, "/v1/models/classifier:predict", body,
                                   headers={"Content-Encoding": "gzip"})
    assert status == 200 and np.argmax(result["predictions"][0]) == 0


async def test_rest_classify_and_regress_return_results(testbed: TestbedProcess) -> None:
    status, classified, _ = await post(testbed, "/v1/models/classifier:classify",
                                       {"examples": [{"features": [5.0, 3.4, 1.5, 0.25]}]})
    assert status == 200
    labels = [label for label, _ in classified["results"][0]]
    assert labels == ["0", "1", "2"]
    status, regressed, _ = await post(testbed, "/v1/models/regressor:regress",
                                      {"examples": [{"features": [0.5, 0.1, 0.2, 0.3]}]})
    assert status == 200
    expected = float(data.regressor_target(np.array([[0.5, 0.1, 0.2, 0.3]]))[0])
    assert abs(regressed["results"][0] - expected) < 0.5


async def test_rest_status_and_metadata_have_tf_serving_shapes(testbed: TestbedProcess) -> None:
    status, body = await get(testbed, "/v1/models/classifier/versions/1")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, meta = await get(testbed, "/v1/models/classifier/labels/stable/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "classifier", "signature_name": "", "version": "1"}
    serving = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert serving["inputs"]["features"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in serving["inputs"]["features"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert serving["method_name"] == "tensorflow/serving/predict"


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/models/nope:predict", {"instances": [1]}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/classifier:predict", {"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}, 400,
     "expecting only one of 'inputs' or 'instances' keys to exist"),
    ("/v1/models/classifier:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("/v1/models/classifier:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/classifier:predict", {"instances": [["a", 2, 3, 4]]}, 400, "is not of expected type: float"),
    ("/v1/models/classifier:explain", {}, 400, "Malformed request: POST /v1/models/classifier:explain"),
    ("/v1/models/classifier/labels/nope:predict", {"instances": [[1, 2, 3, 4]]}, 400,
     "Unrecognized servable version label: nope"),
])
async def test_rest_errors_have_tf_serving_codes_and_messages(testbed: TestbedProcess, path: str, body: Any,
                                                               status: int, message: str) -> None:
    got_status, result, headers = await post(testbed, path, body)
    assert got_status == status
    assert headers["Content-Type"] == "application/json"
    assert message in result["error"]


async def test_rest_paths_outside_v1_and_v2_get_a_404_html_page(testbed: TestbedProcess) -> None:
    status, body = await get(testbed, "/monitoring/other")
    assert status == 404 and "Not Found" in body


async def test_rest_echo_header_shows_what_reached_the_model_server(testbed: TestbedProcess) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _, _, headers = await post(testbed, "/v1/models/classifier:predict", {"instances": [[1.0, 2.0, 3.0, 4.0]]},
                               headers={"X-Testbed-Echo-Headers": "1", "traceparent": traceparent})
    assert json.loads(headers["X-Testbed-Echo-Headers"])["traceparent"] == traceparent


async def test_rest_v2_infer_and_metadata(testbed: TestbedProcess) -> None:
    status, ready = await get(testbed, "/v2/health/ready")
    assert status == 200 and ready == {"ready": True}
    status, meta = await get(testbed, "/v2/models/multi")
    assert status == 200 and {t["name"] for t in meta["inputs"]} == {"x", "tag"}
    body = {"id": "q", "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                   "data": [[5.0, 3.4, 1.5, 0.25]]}]}
    status, result, _ = await post(testbed, "/v2/models/classifier/versions/1/infer", body)
    assert status == 200
    assert (result["model_name"], result["model_version"], result["id"]) == ("classifier", "1", "q")
    (output,) = result["outputs"]
    assert output["datatype"] == "FP32" and output["shape"] == [1, 3] and len(output["data"]) == 3
    status, error, _ = await post(testbed, "/v2/models/nope/infer", body)
    assert status == 404 and "nope" in error["error"]


# --- both backends agree -------------------------------------------------------------------------------------

async def test_numpy_backend_declares_the_same_signatures_as_the_saved_models(testbed: TestbedProcess) -> None:
    for name in ("classifier", "regressor", "multi", "pair"):
        _, meta = await get(testbed, f"/v1/models/{name}/metadata")
        exported = meta["metadata"]["signature_def"]["signature_def"]
        fallback = numpy_models.build(name, 1).signature_defs
        assert set(exported) == set(fallback)
        for key, signature in fallback.items():
            assert exported[key]["method_name"] == signature.method_name
            for side in ("inputs", "outputs"):
                got = {alias: (info["dtype"], [int(d["size"]) for d in info["tensor_shape"]["dim"]])
                       for alias, info in exported[key][side].items()}
                want = {alias: (tf_pb2.DataType.Name(info.dtype), list(shape_of(info.tensor_shape)))
                        for alias, info in getattr(signature, side).items()}
                assert got == want
