"""The explainer's model calls: batched by `batch_rows`, counted against the budget, paced by `model_share`, and
their failures naming the URL called."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from sidecar.explain.bodies import ROWS, BodyShape
from sidecar.explain.errors import NoPredictRouteError
from sidecar.explain.kernel import ExplainError, Job, _Model
from sidecar.worker.features import TensorSpec
from tests.support.rest_upstreams import Received, Reply, ScriptedUpstream, json_reply

SERVICE = 0.05  # seconds the scripted model server takes per predict call


def doubled(request: Received) -> Reply:
    rows = json.loads(request.body)["instances"]
    reply = json_reply(json.dumps({"predictions": [[2 * row[0]] for row in rows]}).encode())
    reply.delay = SERVICE
    return reply


ONE_COLUMN = BodyShape(ROWS, False, (TensorSpec("input", "float64", (1,)),))


def job(port: int, share: float, budget: int = 100) -> Job:
    return Job("m", "/v1/models/m:predict", {}, ("127.0.0.1", port), "", 10, 16, budget, 4, 10.0, share)


async def test_rows_go_in_batches_and_come_back_in_order() -> None:
    async with ScriptedUpstream(doubled) as upstream:
        model = _Model(job(upstream.port, 1.0), ONE_COLUMN, None)
        values = await asyncio.to_thread(model, np.arange(10.0).reshape(10, 1))
    assert values[:, 0].tolist() == [2.0 * n for n in range(10)]
    assert model.calls == 3 and [len(json.loads(r.body)["instances"]) for r in upstream.received] == [4, 4, 2]


async def test_a_model_share_below_one_leaves_the_model_server_idle_between_calls() -> None:
    async with ScriptedUpstream(doubled) as upstream:
        started = time.monotonic()
        await asyncio.to_thread(_Model(job(upstream.port, 0.25), ONE_COLUMN, None), np.zeros((12, 1)))
        paced = time.monotonic() - started
    # three calls of at least SERVICE each; before the 2nd and 3rd, a wait of three times the previous call's time
    assert paced >= 3 * SERVICE + 2 * 3 * SERVICE


async def test_the_budget_stops_an_explanation_with_a_422() -> None:
    async with ScriptedUpstream(doubled) as upstream:
        with pytest.raises(ExplainError) as caught:
            await asyncio.to_thread(_Model(job(upstream.port, 1.0, budget=2), ONE_COLUMN, None), np.zeros((12, 1)))
    assert caught.value.status == 422 and "explain_max_model_calls" in str(caught.value)


@pytest.mark.parametrize("status", [404, 405])
async def test_a_server_without_the_tf_serving_predict_route_is_told_apart(status: int) -> None:
    async with ScriptedUpstream(lambda _: json_reply(b'{"detail":"Not Found"}', status)) as upstream:
        with pytest.raises(NoPredictRouteError) as caught:
            await asyncio.to_thread(_Model(job(upstream.port, 1.0), ONE_COLUMN, None), np.zeros((2, 1)))
    message = str(caught.value)
    assert caught.value.status == 502
    assert f"POST http://127.0.0.1:{upstream.port}/v1/models/m:predict with HTTP {status}" in message
    assert "Not Found" in message and "TF Serving REST API (/v1/models/{m}:predict) only" in message


async def test_another_error_of_the_model_server_names_the_url_and_decides_nothing() -> None:
    async with ScriptedUpstream(lambda _: json_reply(b'{"error": "overloaded"}', 503)) as upstream:
        with pytest.raises(ExplainError) as caught:
            await asyncio.to_thread(_Model(job(upstream.port, 1.0), ONE_COLUMN, None), np.zeros((2, 1)))
    assert not isinstance(caught.value, NoPredictRouteError) and caught.value.status == 502
    assert f"POST http://127.0.0.1:{upstream.port}/v1/models/m:predict with HTTP 503: " in str(caught.value)
