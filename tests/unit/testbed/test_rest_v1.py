from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.rest_v1 import TFServingRest

ROW = json.dumps({"instances": [[5.0, 3.4, 1.5, 0.25]]}).encode()


@pytest.fixture
def rest(registry: ModelRegistry) -> TFServingRest:
    return TFServingRest(registry)


def call(rest: TFServingRest, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    status, text = rest.process(method, path, body)
    return status, json.loads(text)


@pytest.mark.parametrize(("path", "version"), [
    ("/v1/models/classifier:predict", 2),
    ("/v1/models/classifier/versions/1:predict", 1),
    ("/v1/models/classifier/labels/stable:predict", 1),
    ("/V1/MODELS/classifier/Versions/1:predict", 1),
    ("/v1/models/%63lassifier:predict", 2),
])
def test_prediction_paths_follow_tf_serving_grammar(rest: TFServingRest, path: str, version: int) -> None:
    status, body = call(rest, "POST", path, ROW)
    assert status == 200 and len(body["predictions"]) == 1
    _, meta = call(rest, "GET", path.split(":")[0] + "/metadata")
    assert meta["model_spec"]["version"] == str(version)


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("POST", "/v1/models/classifier:PREDICT", 400, "Malformed request: POST /v1/models/classifier:PREDICT"),
    ("POST", "/v1/models/classifier", 400, "Malformed request: POST /v1/models/classifier"),
    ("POST", "/v1/models/classifier/versions/1/labels/stable:predict", 400, "Malformed request"),
    ("POST", "/v1/models/classifier/versions/x:predict", 400, "Malformed request"),
    ("GET", "/v1/models/classifier:predict", 400, "Malformed request: GET /v1/models/classifier:predict"),
    ("GET", "/v1/models/classifier/", 400, "Malformed request: GET /v1/models/classifier/"),
    ("PUT", "/v1/models/classifier", 400, "Malformed request: PUT /v1/models/classifier"),
    ("GET", "/v1/models", 400, "Missing model name in request."),
    ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/classifier/versions/5", 404, "Could not find version 5 of model classifier"),
    ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
    ("GET", "/v1/models/classifier/versions/99999999999999999999", 400, "Failed to convert version: "
                                                                       "99999999999999999999 to numeric."),
])
def test_bad_paths_and_unknown_models(rest: TFServingRest, method: str, path: str, status: int,
                                      message: str) -> None:
    got, body = call(rest, method, path)
    assert got == status and body["error"].startswith(message)


def test_status_ignores_labels_like_tf_serving(rest: TFServingRest) -> None:
    _, body = call(rest, "GET", "/v1/models/classifier/labels/stable")
    assert [s["version"] for s in body["model_version_status"]] == ["2", "1"]


def test_json_errors_come_before_model_lookup(rest: TFServingRest) -> None:
    status, body = call(rest, "POST", "/v1/models/nope:predict", b"{")
    assert status == 400 and body["error"].startswith("JSON Parse error")
    status, body = call(rest, "POST", "/v1/models/nope:predict", b"{}")
    assert status == 404


def test_signature_name_is_honoured_for_predict(rest: TFServingRest) -> None:
    body = json.dumps({"signature_name": "nope", "instances": [[1, 2, 3, 4]]}).encode()
    status, error = call(rest, "POST", "/v1/models/classifier:predict", body)
    assert (status, error["error"]) == (400, 'Serving signature name: "nope" not found in signature def')


def test_classify_and_regress(rest: TFServingRest) -> None:
    examples = json.dumps({"examples": [{"features": [5.0, 3.4, 1.5, 0.25]}]}).encode()
    status, body = call(rest, "POST", "/v1/models/classifier/labels/stable:classify", examples)
    assert status == 200 and [label for label, _ in body["results"][0]] == ["0", "1", "2"]
    status, body = call(rest, "POST", "/v1/models/regressor:regress", examples)
    assert status == 200 and len(body["results"]) == 1
    status, body = call(rest, "POST", "/v1/models/classifier:regress", examples)
    assert status == 400 and "Expected regression signature" in body["error"]
