"""A model's signature asked of the model server: TF Serving's and the Open Inference Protocol's metadata, read from
the testbed's own answers, over a real loopback HTTP server and the testbed's gRPC server."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from sidecar._proto import tf_pb2
from sidecar.testbed import v2
from sidecar.testbed.catalog import build_registry
from sidecar.testbed.grpc import start_grpc_server
from sidecar.testbed.model import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, ModelRegistry, Servable
from sidecar.testbed.rest_v1 import TFServingRest
from sidecar.testbed.rest_v2 import V2Rest
from sidecar.testbed.tensors import DT, make_shape
from sidecar.worker.signature import (
    API_TFSERVING,
    API_V2,
    BOOL,
    FLOAT,
    INT,
    RETRY_SECONDS,
    STRING,
    Lookup,
    Signature,
    SignatureError,
    SignatureFetcher,
    TensorInfo,
    parse_tfserving_metadata,
    parse_v2_metadata,
)

UNKNOWN_RANK = None


def tensor(dtype: int, shape: tuple[int, ...] | None) -> tf_pb2.TensorInfo:
    proto = tf_pb2.TensorShapeProto(unknown_rank=True) if shape is None else make_shape(shape)
    return tf_pb2.TensorInfo(name="t:0", dtype=dtype, tensor_shape=proto)  # type: ignore[arg-type]


def signature_def(method: str, inputs: dict[str, tf_pb2.TensorInfo],
                  outputs: dict[str, tf_pb2.TensorInfo]) -> tf_pb2.SignatureDef:
    result = tf_pb2.SignatureDef(method_name=method)
    for alias, info in inputs.items():
        result.inputs[alias].CopyFrom(info)
    for alias, info in outputs.items():
        result.outputs[alias].CopyFrom(info)
    return result


def never_run(key: str, inputs: Any) -> dict[str, np.ndarray]:
    raise AssertionError("metadata only")


TYPED_INPUTS = {
    "ids": tensor(DT.DT_INT64, (-1, -1)),
    "pixels": tensor(DT.DT_UINT8, (-1, 28, 28, 3)),
    "counts": tensor(DT.DT_INT32, (-1, 2)),
    "small": tensor(DT.DT_INT8, (-1,)),
    "medium": tensor(DT.DT_INT16, (-1,)),
    "wide": tensor(DT.DT_UINT16, (-1,)),
    "wider": tensor(DT.DT_UINT32, (-1,)),
    "widest": tensor(DT.DT_UINT64, (-1,)),
    "weights": tensor(DT.DT_DOUBLE, (-1, 4)),
    "brain": tensor(DT.DT_BFLOAT16, (-1, 3)),
    "mask": tensor(DT.DT_BOOL, (-1,)),
    "text": tensor(DT.DT_STRING, UNKNOWN_RANK),
}
TYPED_OUTPUTS = {"logits": tensor(DT.DT_HALF, (-1, 10)), "label": tensor(DT.DT_STRING, (-1, 1))}
EXPECTED_TYPED_INPUTS = {
    "ids": TensorInfo("ids", INT, (-1,)),
    "pixels": TensorInfo("pixels", INT, (28, 28, 3)),
    "counts": TensorInfo("counts", INT, (2,)),
    "small": TensorInfo("small", INT, ()),
    "medium": TensorInfo("medium", INT, ()),
    "wide": TensorInfo("wide", INT, ()),
    "wider": TensorInfo("wider", INT, ()),
    "widest": TensorInfo("widest", INT, ()),
    "weights": TensorInfo("weights", FLOAT, (4,)),
    "brain": TensorInfo("brain", FLOAT, (3,)),
    "mask": TensorInfo("mask", BOOL, ()),
    "text": TensorInfo("text", STRING, None),
}
EXPECTED_TYPED_OUTPUTS = {"logits": TensorInfo("logits", FLOAT, (10,)), "label": TensorInfo("label", STRING, (1,))}


def typed_servable() -> Servable:
    """A model whose serving_default declares every element type, unknown sizes and an unknown rank."""
    return Servable("typed", 1, {
        "serving_default": signature_def(PREDICT_METHOD, TYPED_INPUTS, TYPED_OUTPUTS),
        "classification": signature_def(CLASSIFY_METHOD, {"inputs": tensor(DT.DT_STRING, (-1,))},
                                        {"scores": tensor(DT.DT_FLOAT, (-1, 3))}),
    }, never_run)


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    """The testbed's numpy models (classifier, regressor, multi; versions 1 and 2) plus `typed`."""
    testbed = build_registry("numpy")
    servables = [servable for name in ("classifier", "regressor", "multi") for servable in testbed.versions(name)]
    return ModelRegistry([*servables, typed_servable()])


def tfserving_metadata(registry: ModelRegistry, model: str) -> dict[str, Any]:
    """The testbed's TF Serving REST answer to `GET /v1/models/{model}/metadata`, parsed."""
    status, text = TFServingRest(registry).process("GET", f"/v1/models/{model}/metadata", b"")
    assert status == 200, text
    document: dict[str, Any] = json.loads(text)
    return document


def metadata_with(signatures: dict[str, tf_pb2.SignatureDef]) -> dict[str, Any]:
    return tfserving_metadata(ModelRegistry([Servable("m", 1, signatures, never_run)]), "m")


def predict(name: str = "x") -> tf_pb2.SignatureDef:
    return signature_def(PREDICT_METHOD, {name: tensor(DT.DT_FLOAT, (-1, 2))}, {"y": tensor(DT.DT_FLOAT, (-1,))})


# --- TF Serving metadata -------------------------------------------------------------------------------------------


def test_tfserving_metadata_of_the_testbed_classifier_gives_its_serving_default_signature(
        registry: ModelRegistry) -> None:
    signature = parse_tfserving_metadata(tfserving_metadata(registry, "classifier"), "tfserving rest")
    assert signature == Signature({"features": TensorInfo("features", FLOAT, (4,))},
                                  {"probabilities": TensorInfo("probabilities", FLOAT, (3,))}, "tfserving rest")


def test_tfserving_metadata_gives_float_and_string_tensors_of_the_testbed_multi_model(
        registry: ModelRegistry) -> None:
    signature = parse_tfserving_metadata(tfserving_metadata(registry, "multi"), "s")
    assert signature.inputs == {"x": TensorInfo("x", FLOAT, (3,)), "tag": TensorInfo("tag", STRING, ())}
    assert signature.outputs == {"score": TensorInfo("score", FLOAT, ()),
                                 "label_bytes": TensorInfo("label_bytes", STRING, ())}


def test_tfserving_element_types_reduce_to_float_int_bool_and_string_with_per_instance_shapes(
        registry: ModelRegistry) -> None:
    signature = parse_tfserving_metadata(tfserving_metadata(registry, "typed"), "s")
    assert signature.inputs == EXPECTED_TYPED_INPUTS
    assert signature.outputs == EXPECTED_TYPED_OUTPUTS


def test_serving_default_is_preferred_to_the_other_signatures() -> None:
    document = metadata_with({"a_predict": predict("a"), "serving_default": predict("chosen"),
                              "z_predict": predict("z")})
    assert list(parse_tfserving_metadata(document, "s").inputs) == ["chosen"]


def test_without_serving_default_the_only_predict_signature_is_chosen() -> None:
    classify = signature_def(CLASSIFY_METHOD, {"inputs": tensor(DT.DT_STRING, (-1,))},
                             {"scores": tensor(DT.DT_FLOAT, (-1, 3))})
    document = metadata_with({"a_classify": classify, "b_predict": predict("chosen"), "c_classify": classify})
    assert list(parse_tfserving_metadata(document, "s").inputs) == ["chosen"]


def test_without_serving_default_a_lone_signature_is_chosen_whatever_its_method() -> None:
    regress = signature_def(REGRESS_METHOD, {"inputs": tensor(DT.DT_STRING, (-1,))},
                            {"outputs": tensor(DT.DT_FLOAT, (-1,))})
    assert list(parse_tfserving_metadata(metadata_with({"regression": regress}), "s").outputs) == ["outputs"]


def test_several_predict_signatures_without_serving_default_are_an_error() -> None:
    with pytest.raises(SignatureError, match="no serving_default signature among"):
        parse_tfserving_metadata(metadata_with({"first": predict(), "second": predict()}), "s")


@pytest.mark.parametrize("document", [
    {"model_spec": {"name": "m", "version": "1"}, "metadata": {}},
    {"model_spec": {"name": "m", "version": "1"}},
    {"metadata": {"signature_def": {"signature_def": {}}}},
    {"metadata": {"signature_def": {}}},
    {"metadata": "signature_def"},
], ids=["no-signature-def", "no-metadata", "empty-map", "no-inner-map", "not-an-object"])
def test_metadata_without_signature_def_is_an_error(document: dict[str, Any]) -> None:
    with pytest.raises(SignatureError, match="no signature_def"):
        parse_tfserving_metadata(document, "s")


def test_the_source_is_kept() -> None:
    assert parse_tfserving_metadata(metadata_with({"serving_default": predict()}), "where").source == "where"


# --- Open Inference Protocol metadata ------------------------------------------------------------------------------


def test_v2_metadata_of_an_mlserver_like_answer() -> None:
    document = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]}
    assert parse_v2_metadata(document, "v2 rest") == Signature(
        {"x": TensorInfo("x", FLOAT, (4,))}, {"predict": TensorInfo("predict", INT, (1,))}, "v2 rest")


@pytest.mark.parametrize(("datatype", "kind"), [
    ("FP16", FLOAT), ("FP32", FLOAT), ("FP64", FLOAT), ("BF16", FLOAT), ("INT8", INT), ("INT16", INT),
    ("INT32", INT), ("INT64", INT), ("UINT8", INT), ("UINT16", INT), ("UINT32", INT), ("UINT64", INT),
    ("BOOL", BOOL), ("BYTES", STRING)])
def test_v2_datatypes_reduce_to_four_kinds(datatype: str, kind: str) -> None:
    document = {"inputs": [{"name": "x", "datatype": datatype, "shape": [-1, 2, -1]}]}
    assert parse_v2_metadata(document, "s").inputs == {"x": TensorInfo("x", kind, (2, -1))}


def test_v2_metadata_without_inputs_or_outputs_is_an_empty_signature() -> None:
    signature = parse_v2_metadata({"name": "m", "versions": [], "platform": "mlserver"}, "v2 rest")
    assert signature.empty
    assert (signature.inputs, signature.outputs) == ({}, {})


def test_a_v2_tensor_without_shape_has_unknown_rank() -> None:
    assert parse_v2_metadata({"inputs": [{"name": "x", "datatype": "FP32"}]}, "s").inputs == {
        "x": TensorInfo("x", FLOAT, None)}


def test_v2_metadata_of_the_testbed_multi_model(registry: ModelRegistry) -> None:
    document = v2.model_metadata(registry, registry.resolve("multi"))
    signature = parse_v2_metadata(document, "s")
    assert signature.inputs == {"tag": TensorInfo("tag", STRING, ()), "x": TensorInfo("x", FLOAT, (3,))}
    assert signature.outputs == {"label_bytes": TensorInfo("label_bytes", STRING, ()),
                                 "score": TensorInfo("score", FLOAT, ())}


# --- The fetcher over a real loopback HTTP server ------------------------------------------------------------------


class Upstream:
    """A loopback HTTP server answering as the testbed's REST APIs do (TF Serving `/v1`, V2 `/v2`), counting the
    requests; `override` answers a path with a fixed status and body instead."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.tfserving = TFServingRest(registry)
        self.v2 = V2Rest(registry)
        self.requests: list[str] = []
        self.override: dict[str, tuple[int, bytes]] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.requests.append(self.path)
                status, body = upstream.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = ("127.0.0.1", int(self.server.server_address[1]))

    def answer(self, path: str) -> tuple[int, bytes]:
        if path in self.override:
            return self.override[path]
        api = self.v2 if path.startswith("/v2") else self.tfserving
        status, text = api.process("GET", path, b"")
        return status, text.encode()


@pytest.fixture
def upstream(registry: ModelRegistry) -> Iterator[Upstream]:
    server = Upstream(registry)
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    thread.join()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rest_fetcher(upstream: Upstream, clock: FakeClock | None = None) -> SignatureFetcher:
    return SignatureFetcher(upstream.address, None, timeout=5.0, clock=clock or FakeClock())


def test_a_tfserving_lookup_asks_the_metadata_path_and_returns_the_signature(upstream: Upstream) -> None:
    found = rest_fetcher(upstream).lookup(API_TFSERVING, "classifier", "")
    assert found == Lookup(Signature({"features": TensorInfo("features", FLOAT, (4,))},
                                     {"probabilities": TensorInfo("probabilities", FLOAT, (3,))}, "tfserving rest"),
                           None)
    assert upstream.requests == ["/v1/models/classifier/metadata"]


def test_a_tfserving_lookup_of_a_version_asks_that_versions_metadata(upstream: Upstream) -> None:
    found = rest_fetcher(upstream).lookup(API_TFSERVING, "typed", "1")
    assert found.signature is not None and found.signature.inputs == EXPECTED_TYPED_INPUTS
    assert upstream.requests == ["/v1/models/typed/versions/1/metadata"]


def test_a_v2_lookup_asks_the_model_path_and_returns_the_signature(upstream: Upstream) -> None:
    found = rest_fetcher(upstream).lookup(API_V2, "regressor", "")
    assert found == Lookup(Signature({"features": TensorInfo("features", FLOAT, (4,))},
                                     {"value": TensorInfo("value", FLOAT, ())}, "v2 rest"), None)
    assert upstream.requests == ["/v2/models/regressor"]


def test_a_v2_lookup_of_a_version_asks_that_versions_path(upstream: Upstream) -> None:
    assert rest_fetcher(upstream).lookup(API_V2, "regressor", "1").signature is not None
    assert upstream.requests == ["/v2/models/regressor/versions/1"]


def test_a_v2_answer_without_inputs_or_outputs_gives_an_empty_signature(upstream: Upstream) -> None:
    upstream.override["/v2/models/m"] = (200, b'{"name": "m", "versions": [], "platform": "mlserver"}')
    found = rest_fetcher(upstream).lookup(API_V2, "m", "")
    assert found.signature is not None and found.signature.empty
    assert found.error is None


def test_the_model_name_is_quoted_into_the_path(upstream: Upstream) -> None:
    rest_fetcher(upstream).lookup(API_TFSERVING, "a/b c", "")
    assert upstream.requests == ["/v1/models/a%2Fb%20c/metadata"]


def test_an_unknown_model_gives_the_http_status_as_the_error(upstream: Upstream) -> None:
    assert rest_fetcher(upstream).lookup(API_TFSERVING, "m", "") == Lookup(None, "GET /v1/models/m/metadata: HTTP 404")


def test_an_unknown_v2_model_gives_the_http_status_as_the_error(upstream: Upstream) -> None:
    assert rest_fetcher(upstream).lookup(API_V2, "m", "") == Lookup(None, "GET /v2/models/m: HTTP 404")


def test_an_answer_that_is_not_json_is_an_error(upstream: Upstream) -> None:
    upstream.override["/v1/models/m/metadata"] = (200, b"<html>proxy</html>")
    assert rest_fetcher(upstream).lookup(API_TFSERVING, "m", "") == Lookup(None, "GET /v1/models/m/metadata: not JSON")


def test_a_json_answer_that_is_not_an_object_is_an_error(upstream: Upstream) -> None:
    upstream.override["/v2/models/m"] = (200, b"[1, 2]")
    assert rest_fetcher(upstream).lookup(API_V2, "m", "") == Lookup(None, "GET /v2/models/m: not a JSON object")


def test_a_tfserving_answer_without_signature_def_is_an_error(upstream: Upstream) -> None:
    upstream.override["/v1/models/m/metadata"] = (200, b'{"model_spec": {"name": "m"}, "metadata": {}}')
    assert rest_fetcher(upstream).lookup(API_TFSERVING, "m", "") == Lookup(
        None, "the metadata holds no signature_def")


def test_an_unreachable_server_is_an_error_naming_the_path() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = int(closed.server_address[1])
    found = SignatureFetcher(("127.0.0.1", port), None, timeout=5.0).lookup(API_TFSERVING, "m", "")
    assert found.signature is None
    assert found.error is not None and found.error.startswith("GET /v1/models/m/metadata: ")


def test_a_signature_is_asked_for_once_per_api_model_and_version(upstream: Upstream) -> None:
    fetcher = rest_fetcher(upstream)
    first = fetcher.lookup(API_TFSERVING, "classifier", "")
    assert fetcher.lookup(API_TFSERVING, "classifier", "") == first
    assert len(upstream.requests) == 1
    fetcher.lookup(API_TFSERVING, "classifier", "1")
    fetcher.lookup(API_V2, "classifier", "")
    assert upstream.requests == ["/v1/models/classifier/metadata", "/v1/models/classifier/versions/1/metadata",
                                 "/v2/models/classifier"]


def test_a_signature_once_found_is_never_asked_for_again(upstream: Upstream) -> None:
    clock = FakeClock()
    fetcher = rest_fetcher(upstream, clock)
    fetcher.lookup(API_V2, "multi", "")
    clock.now += 100 * RETRY_SECONDS
    assert fetcher.lookup(API_V2, "multi", "").signature is not None
    assert len(upstream.requests) == 1


def test_a_failure_is_answered_from_the_cache_until_retry_seconds_have_passed(upstream: Upstream) -> None:
    clock = FakeClock()
    fetcher = rest_fetcher(upstream, clock)
    failed = fetcher.lookup(API_TFSERVING, "m", "")
    clock.now += RETRY_SECONDS - 0.5
    assert fetcher.lookup(API_TFSERVING, "m", "") == failed
    assert len(upstream.requests) == 1


def test_a_failure_is_retried_after_retry_seconds(upstream: Upstream) -> None:
    clock = FakeClock()
    fetcher = rest_fetcher(upstream, clock)
    upstream.override["/v1/models/classifier/metadata"] = (503, b'{"error": "loading"}')
    assert fetcher.lookup(API_TFSERVING, "classifier", "") == Lookup(
        None, "GET /v1/models/classifier/metadata: HTTP 503")
    del upstream.override["/v1/models/classifier/metadata"]
    clock.now += RETRY_SECONDS
    assert fetcher.lookup(API_TFSERVING, "classifier", "").signature is not None
    assert len(upstream.requests) == 2


def test_a_failed_retry_waits_retry_seconds_again(upstream: Upstream) -> None:
    clock = FakeClock()
    fetcher = rest_fetcher(upstream, clock)
    fetcher.lookup(API_TFSERVING, "m", "")
    clock.now += RETRY_SECONDS
    fetcher.lookup(API_TFSERVING, "m", "")
    clock.now += RETRY_SECONDS - 0.5
    fetcher.lookup(API_TFSERVING, "m", "")
    assert len(upstream.requests) == 2


def test_the_environments_http_proxy_is_not_used_to_reach_the_model_server(
        upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        proxy = f"http://127.0.0.1:{closed.server_address[1]}"
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener reads the environment once, when built
    assert rest_fetcher(upstream).lookup(API_TFSERVING, "classifier", "").error is None


def test_a_fetcher_without_upstream_is_disabled_and_says_so() -> None:
    fetcher = SignatureFetcher(None, None)
    assert not fetcher.enabled
    assert fetcher.lookup(API_TFSERVING, "m", "") == Lookup(None, "no upstream to ask")


@pytest.mark.parametrize(("rest", "grpc"), [(("127.0.0.1", 8501), None), (None, ("127.0.0.1", 8500))],
                         ids=["rest", "grpc"])
def test_a_fetcher_with_either_upstream_is_enabled(rest: tuple[str, int] | None, grpc: tuple[str, int] | None) -> None:
    assert SignatureFetcher(rest, grpc).enabled


# --- The fetcher over the testbed's gRPC server --------------------------------------------------------------------


@pytest.fixture
async def grpc_port(registry: ModelRegistry) -> AsyncIterator[int]:
    server, port = await start_grpc_server(registry, "127.0.0.1", 0)
    yield port
    await server.stop(None)


async def grpc_lookup(port: int, api: str, model: str, version: str) -> Lookup:
    """The fetcher blocks, so it runs in a thread while this loop serves the testbed's gRPC server."""
    fetcher = SignatureFetcher(None, ("127.0.0.1", port), timeout=5.0)
    return await asyncio.to_thread(fetcher.lookup, api, model, version)


async def test_a_grpc_tfserving_lookup_reads_the_signature_def_map(grpc_port: int) -> None:
    found = await grpc_lookup(grpc_port, API_TFSERVING, "typed", "")
    assert found == Lookup(Signature(EXPECTED_TYPED_INPUTS, EXPECTED_TYPED_OUTPUTS, "tfserving grpc"), None)


async def test_a_grpc_tfserving_lookup_of_a_version_gets_that_version(grpc_port: int) -> None:
    found = await grpc_lookup(grpc_port, API_TFSERVING, "classifier", "1")
    assert found.signature is not None and found.signature.inputs == {"features": TensorInfo("features", FLOAT, (4,))}


async def test_grpc_and_rest_give_the_same_tfserving_signature(grpc_port: int, registry: ModelRegistry) -> None:
    found = await grpc_lookup(grpc_port, API_TFSERVING, "multi", "")
    rest = parse_tfserving_metadata(tfserving_metadata(registry, "multi"), "tfserving grpc")
    assert found == Lookup(rest, None)


async def test_a_grpc_v2_lookup_reads_the_model_metadata(grpc_port: int) -> None:
    found = await grpc_lookup(grpc_port, API_V2, "regressor", "2")
    assert found == Lookup(Signature({"features": TensorInfo("features", FLOAT, (4,))},
                                     {"value": TensorInfo("value", FLOAT, ())}, "v2 grpc"), None)


async def test_a_grpc_error_gives_its_status_and_details(grpc_port: int) -> None:
    found = await grpc_lookup(grpc_port, API_TFSERVING, "m", "")
    assert found == Lookup(None, "gRPC metadata: NOT_FOUND: Servable not found for request: Latest(m)")
