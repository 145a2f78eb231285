from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.testbed.model import ModelRegistry
from sidecar.testbed.rest_v2 import V2Rest

INFER = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 0], [0, 0, 5]]},
                    {"name": "tag", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}


@pytest.fixture
def rest(registry: ModelRegistry) -> V2Rest:
    return V2Rest(registry)


def call(rest: V2Rest, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    status, text = rest.process(method, path, raw)
    return status, json.loads(text)


def test_server_endpoints(rest: V2Rest) -> None:
    assert call(rest, "GET", "/v2") == (200, {"name": "sidecar-testbed", "version": "1", "extensions": []})
    assert call(rest, "GET", "/v2/health/live") == (200, {"live": True})
    assert call(rest, "GET", "/v2/health/ready") == (200, {"ready": True})


def test_model_metadata_and_readiness(rest: V2Rest) -> None:
    status, meta = call(rest, "GET", "/v2/models/multi/versions/1")
    assert status == 200 and meta["name"] == "multi"
    assert call(rest, "GET", "/v2/models/multi/ready") == (200, {"name": "multi", "ready": True})
    assert call(rest, "GET", "/v2/models/nope/ready")[0] == 404


def test_infer_returns_every_output_with_shape_and_datatype(rest: V2Rest) -> None:
    status, body = call(rest, "POST", "/v2/models/multi/infer", {**INFER, "id": "abc"})
    assert status == 200
    assert (body["model_name"], body["model_version"], body["id"]) == ("multi", "2", "abc")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["score"]["datatype"] == "FP32" and outputs["score"]["shape"] == [2]
    assert outputs["label_bytes"]["data"] == ["a:high", "b:low"]


def test_infer_can_request_a_subset_of_outputs(rest: V2Rest) -> None:
    _, body = call(rest, "POST", "/v2/models/multi/versions/1/infer", {**INFER, "outputs": [{"name": "score"}]})
    assert [o["name"] for o in body["outputs"]] == ["score"] and "id" not in body


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/v2/models/nope/infer", INFER, 404, "Request for unknown model: 'nope' is not found"),
    ("POST", "/v2/models/multi/infer", b"{", 400, "failed to parse the request JSON"),
    ("POST", "/v2/models/multi/infer", {"inputs": {}}, 400, "'inputs' array"),
    ("POST", "/v2/models/multi/infer", {"inputs": [{"name": "x"}]}, 400, "'shape' list of integers"),
    ("POST", "/v2/models/multi/infer", {"inputs": [{"name": "x", "shape": [1]}]}, 400, "'datatype' and 'data'"),
    ("POST", "/v2/models/multi/infer", {"inputs": INFER["inputs"] * 2}, 400, "given twice"),
    ("POST", "/v2/models/multi/infer", {**INFER, "outputs": "score"}, 400, "'outputs' must be a list"),
    ("GET", "/v2/models/multi/infer", None, 400, "method GET is not allowed"),
    ("GET", "/v2/other", None, 404, "Not Found"),
])
def test_infer_errors(rest: V2Rest, method: str, path: str, body: Any, status: int, message: str) -> None:
    got, error = call(rest, method, path, body)
    assert got == status and message in error["error"]
