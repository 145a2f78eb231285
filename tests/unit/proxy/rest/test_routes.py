"""Route recognition: what a REST request means for labels and capture (TF Serving and Open Inference Protocol)."""

from __future__ import annotations

import pytest

from sidecar.messages.records import API_TFSERVING, API_V2
from sidecar.proxy.rest.routes import OTHER, Route, parse_route


@pytest.mark.parametrize(("method", "path", "route"), [
    ("POST", "/v1/models/m:predict", Route(API_TFSERVING, "predict", "m", "", "")),
    ("POST", "/v1/models/m:classify", Route(API_TFSERVING, "classify", "m", "", "")),
    ("POST", "/v1/models/m:regress", Route(API_TFSERVING, "regress", "m", "", "")),
    ("POST", "/v1/models/m/versions/12:predict", Route(API_TFSERVING, "predict", "m", "12", "")),
    ("POST", "/v1/models/m/labels/canary:predict", Route(API_TFSERVING, "predict", "m", "", "canary")),
    ("POST", "/V1/Models/m/Versions/3:predict", Route(API_TFSERVING, "predict", "m", "3", "")),
    ("POST", "/v1/models/my%20model:predict?debug=1", Route(API_TFSERVING, "predict", "my model", "", "")),
    ("GET", "/v1/models/m", Route(API_TFSERVING, "status", "m", "", "")),
    ("GET", "/v1/models/m/versions/2", Route(API_TFSERVING, "status", "m", "2", "")),
    ("GET", "/v1/models/m/labels/stable/metadata", Route(API_TFSERVING, "metadata", "m", "", "stable")),
    ("POST", "/v2/models/m/infer", Route(API_V2, "infer", "m", "", "")),
    ("POST", "/v2/models/m/versions/1/infer", Route(API_V2, "infer", "m", "1", "")),
    ("GET", "/v2/models/m", Route(API_V2, "metadata", "m", "", "")),
    ("GET", "/v2/models/m/versions/1/ready", Route(API_V2, "ready", "m", "1", "")),
])
def test_known_routes_name_the_model_version_label_and_verb(method: str, path: str, route: Route) -> None:
    assert parse_route(method, path) == route


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models/m:predict"),  # verbs need POST
    ("POST", "/v1/models/m:PREDICT"),  # verbs are lowercase
    ("POST", "/v1/models/m/versions/1/labels/x:predict"),  # version and label together
    ("POST", "/v1/models/m/versions/one:predict"),
    ("GET", "/monitoring/prometheus/metrics"),
    ("GET", "/v2/health/ready"),
    ("GET", "/"),
])
def test_other_shapes_are_not_model_calls(method: str, path: str) -> None:
    route = parse_route(method, path)
    assert not route.captured
    assert route == OTHER or route.method == "other"


def test_explain_is_a_verb_of_its_own_that_is_not_captured() -> None:
    assert parse_route("POST", "/v1/models/m/versions/3:explain") == Route(API_TFSERVING, "explain", "m", "3", "")
    assert not parse_route("POST", "/v1/models/m:explain").captured
    assert parse_route("GET", "/v1/models/m:explain") == OTHER


def test_only_inference_verbs_are_captured() -> None:
    assert parse_route("POST", "/v1/models/m:predict").captured
    assert parse_route("POST", "/v2/models/m/infer").captured
    assert not parse_route("GET", "/v1/models/m").captured
    assert not parse_route("GET", "/v1/models/m/metadata").captured
    assert not parse_route("POST", "/v1/models/m").captured
