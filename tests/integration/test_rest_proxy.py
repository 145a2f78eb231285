"""The REST proxy in front of the testbed (real TF models behind TF Serving's REST API).

Every answer through the proxy is compared with the answer to the same request sent directly: same status, reason,
body bytes, Content-Type and end-to-end headers; the proxy only adds `X-Prediction-Id`.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.messages.records import CaptureRecord
from sidecar.proxy.rest.proxy import RestProxy
from sidecar.telemetry.metrics import RequestMetrics
from sidecar.telemetry.tracing import with_processor
from tests.support.rest_upstreams import Answered, exchange, running_proxy
from tests.support.testbed import TestbedProcess

FEATURES = [[5.0, 3.4, 1.5, 0.25], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.5, 2.0]]
TAG_BYTES = b"\x00\xffraw"


def request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: model-server", *headers]
    if method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post_json(path: str, payload: Any, *headers: str) -> bytes:
    return request("POST", path, json.dumps(payload).encode(), "Content-Type: application/json", *headers)


CASES: dict[str, bytes] = {
    "row predict": post_json("/v1/models/classifier:predict", {"instances": FEATURES}),
    "columnar predict, version": post_json("/v1/models/classifier/versions/2:predict", {"inputs": FEATURES}),
    "predict by label": post_json("/v1/models/classifier/labels/stable:predict", {"instances": FEATURES[:1]}),
    "b64 rows, two outputs": post_json("/v1/models/multi:predict", {"instances": [
        {"x": [1.0, 2.0, 0.5], "tag": {"b64": base64.b64encode(TAG_BYTES).decode()}},
        {"x": [-1.0, -2.0, 0.5], "tag": "beta"}]}),
    "columnar named inputs": post_json("/v1/models/multi:predict", {"inputs": {"x": [[1.0, 2.0, 0.5]],
                                                                                "tag": ["alpha"]}}),
    "NaN tokens": request("POST", "/v1/models/multi:predict",
                          b'{"inputs": {"x": [[NaN, 1.0, Infinity]], "tag": ["a"]}}'),
    "gzip body": request("POST", "/v1/models/classifier:predict",
                         gzip.compress(json.dumps({"instances": FEATURES}).encode()), "Content-Encoding: gzip"),
    "classify": post_json("/v1/models/classifier:classify", {"examples": [{"features": FEATURES[0]}]}),
    "regress": post_json("/v1/models/regressor:regress", {"examples": [{"features": [0.5, 0.1, 0.2, 0.3]}]}),
    "status": request("GET", "/v1/models/classifier"),
    "status of a version": request("GET", "/v1/models/classifier/versions/1"),
    "metadata by label": request("GET", "/v1/models/classifier/labels/stable/metadata"),
    "v2 infer": post_json("/v2/models/classifier/versions/1/infer", {"id": "q", "inputs": [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": FEATURES[0]}]}),
    "v2 model metadata": request("GET", "/v2/models/multi"),
    "error: unknown model": post_json("/v1/models/nope:predict", {"instances": [1]}),
    "error: both keys": post_json("/v1/models/classifier:predict", {"instances": FEATURES, "inputs": FEATURES}),
    "error: bad json": request("POST", "/v1/models/classifier:predict", b"{not json"),
    "error: wrong type": post_json("/v1/models/classifier:predict", {"instances": [["a", 2, 3, 4]]}),
    "error: unknown verb": post_json("/v1/models/classifier:explain", {}),
    "error: unknown label": post_json("/v1/models/classifier/labels/nope:predict", {"instances": FEATURES}),
    "error: html 404": request("GET", "/monitoring/other"),
    "error: v2 unknown model": post_json("/v2/models/nope/infer", {"inputs": []}),
}


@pytest.fixture
async def proxy(testbed: TestbedProcess) -> AsyncIterator[RestProxy]:
    async with running_proxy(testbed.rest_port, host=testbed.host) as running:
        yield running


def comparable(answer: Answered) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Everything the client sees, header order included, except the Date value and the proxy's own id header."""
    headers = [(name, "<date>" if name.lower() == "date" else value) for name, value in answer.headers
               if name.lower() != "x-prediction-id"]
    return answer.status, answer.reason, headers, answer.body


@pytest.mark.parametrize("case", list(CASES))
async def test_answers_through_the_proxy_equal_direct_answers_byte_for_byte(testbed: TestbedProcess,
                                                                           proxy: RestProxy, case: str) -> None:
    (direct,) = await exchange(testbed.rest_port, CASES[case])
    (proxied,) = await exchange(proxy.port, CASES[case])
    assert comparable(proxied) == comparable(direct)
    assert proxied.header("Content-Type") == direct.header("Content-Type")
    inference = any(verb in CASES[case].split(b" HTTP/")[0] for verb in (b":predict", b":classify", b":regress",
                                                                         b"/infer"))
    assert bool(proxied.header("X-Prediction-Id")) is inference  # only answers feedback can join carry an id
    if case.startswith("error"):
        assert direct.status >= 400


async def test_the_model_server_sees_the_client_headers_minus_hop_by_hop_plus_the_id(testbed: TestbedProcess,
                                                                                     proxy: RestProxy) -> None:
    (got,) = await exchange(proxy.port, post_json("/v1/models/classifier:predict", {"instances": FEATURES},
                                                  "X-Testbed-Echo-Headers: 1", "Connection: keep-alive, X-Hop",
                                                  "X-Hop: 1", "X-Request-Id: req-42", "Authorization: Bearer t"))
    seen = json.loads(got.header("X-Testbed-Echo-Headers") or "{}")
    assert seen["x-prediction-id"] == "req-42" == got.header("X-Prediction-Id")
    assert seen["authorization"] == "Bearer t" and seen["host"] == "model-server"
    assert "x-hop" not in seen and "connection" not in seen


async def test_a_slow_model_server_gives_504_and_the_proxy_keeps_serving(testbed: TestbedProcess) -> None:
    metrics = RequestMetrics()
    async with running_proxy(testbed.rest_port, host=testbed.host, upstream_timeout=0.3, metrics=metrics) as proxy:
        slow, fast = await asyncio.gather(
            exchange(proxy.port, post_json("/v1/models/classifier:predict", {"instances": FEATURES},
                                           "X-Testbed-Delay-Ms: 2000")),
            exchange(proxy.port, post_json("/v1/models/classifier:predict", {"instances": FEATURES})))
    assert slow[0].status == 504 and "did not answer" in json.loads(slow[0].body)["error"]
    assert fast[0].status == 200
    assert metrics.upstream_errors == {("rest", "timeout"): 1}


async def test_trace_context_of_the_client_span_reaches_the_model_server(testbed: TestbedProcess) -> None:
    exporter = InMemorySpanExporter()
    tracing = with_processor(SimpleSpanProcessor(exporter))
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with running_proxy(testbed.rest_port, host=testbed.host, tracing=tracing) as proxy:
        (got,) = await exchange(proxy.port, post_json("/v1/models/classifier:predict", {"instances": FEATURES},
                                                      f"traceparent: {incoming}", "X-Testbed-Echo-Headers: 1"))
    seen = json.loads(got.header("X-Testbed-Echo-Headers") or "{}")
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    client = spans[SpanKind.CLIENT]
    assert client.context is not None
    assert seen["traceparent"] == f"00-4bf92f3577b34da6a3ce929d0e0e4736-{client.context.span_id:016x}-01"
    assert dict(spans[SpanKind.SERVER].attributes or {})["sidecar.model"] == "classifier"


async def test_predictions_are_captured_with_the_model_answer(testbed: TestbedProcess) -> None:
    records: list[CaptureRecord] = []
    async with running_proxy(testbed.rest_port, host=testbed.host, capture=records.append) as proxy:
        (got,) = await exchange(proxy.port, CASES["row predict"])
        await exchange(proxy.port, CASES["status"])
    (record,) = records
    assert record.prediction_id == got.header("X-Prediction-Id")
    assert record.response == got.body and json.loads(record.response)["predictions"]
    assert (record.model, record.method, record.status) == ("classifier", "predict", 200)


async def test_many_concurrent_clients_through_a_small_pool(testbed: TestbedProcess) -> None:
    metrics = RequestMetrics()
    async with running_proxy(testbed.rest_port, host=testbed.host, upstream_pool_size=4, metrics=metrics) as proxy, \
            aiohttp.ClientSession() as session:
        async def call(i: int) -> tuple[int, Any]:
            async with session.post(f"http://127.0.0.1:{proxy.port}/v1/models/regressor:predict",
                                    json={"instances": [[float(i), 0.0, 0.0, 0.0]]}) as response:
                return response.status, await response.json()

        results = await asyncio.gather(*(call(i) for i in range(100)))
        assert proxy.pool.idle <= 4
    assert all(status == 200 and len(body["predictions"]) == 1 for status, body in results)
    assert metrics.requests[("regressor", "", "rest", "predict", "200")] == 100
