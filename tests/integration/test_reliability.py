"""A bad day in production: an analysis worker killed (kill -9) while clients keep calling costs them nothing, the
records in flight are counted lost, and the analysis resumes with a new worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from tests.support.helpers import eventually, metric
from tests.support.rest_upstreams import Received, Reply, ScriptedUpstream, json_reply

pytestmark = pytest.mark.slow


def answer(request: Received) -> Reply:
    count = len(json.loads(request.body)["instances"])
    return json_reply(json.dumps({"predictions": [[0.25, 0.75]] * count}).encode())


async def test_killing_the_analysis_worker_under_load_fails_no_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    async with ScriptedUpstream(answer) as upstream:
        sidecar = Sidecar(from_mapping({
            "upstream_rest": f"http://127.0.0.1:{upstream.port}", "upstream_grpc": "off", "listen_grpc": "off",
            "listen_rest": "127.0.0.1:0", "listen_admin": "off", "state_dir": str(tmp_path),
            "reference_size": 100, "window_size": 100, "signature_lookup": False}))
        await sidecar.start()
        assert sidecar.pool is not None
        assert await sidecar.pool.wait_ready(60)
        statuses: list[int] = []
        stop = asyncio.Event()

        async def client() -> None:
            url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/m:predict"
            async with aiohttp.ClientSession() as session:
                while not stop.is_set():
                    body = {"instances": rng.normal(size=(5, 4)).tolist()}
                    async with session.post(url, json=body) as response:
                        await response.read()
                        statuses.append(response.status)

        def analysed() -> float:
            return metric(sidecar.registry, "sidecar_analysed_instances_total", model="m")

        clients = [asyncio.create_task(client()) for _ in range(4)]
        try:
            await eventually(lambda: analysed() >= 500)
            [pid] = sidecar.pool.worker_pids()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: metric(sidecar.registry, "sidecar_worker_restarts_total", worker="0") == 1)
            resumed_from = analysed()
            await eventually(lambda: analysed() >= resumed_from + 500)  # the new worker analyses the traffic
        finally:
            stop.set()
            await asyncio.gather(*clients)
            await sidecar.stop()
    assert len(statuses) > 200
    assert set(statuses) == {200}
