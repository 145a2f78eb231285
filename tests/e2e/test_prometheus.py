"""A real Prometheus scrapes the sidecar; promtool accepts our exposition and our alert rules."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.config import from_mapping
from tests.support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                      reason="Debian package prometheus not installed (scripts/test.sh installs it)")


@pytest.fixture
async def sidecar(testbed, tmp_path: Path) -> AsyncIterator[Sidecar]:  # type: ignore[no-untyped-def]
    settings = from_mapping({
        "upstream_rest": testbed.rest_url, "upstream_grpc": f"127.0.0.1:{testbed.grpc_port}",
        "listen_rest": "127.0.0.1:0", "listen_grpc": "127.0.0.1:0", "listen_admin": "127.0.0.1:0",
        "state_dir": str(tmp_path), "analysis_enabled": False,
    })
    running = Sidecar(settings)
    await running.start()
    yield running
    await running.stop()


async def send_predictions(sidecar: Sidecar, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/models/classifier:predict",
                                    json={"instances": [[1.0, 2.0, 3.0, 4.0]]}) as response:
                assert response.status == 200


@needs_prometheus
async def test_promtool_accepts_the_metrics_exposition(sidecar: Sidecar) -> None:
    await send_predictions(sidecar, 3)
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as response:
        text = await response.read()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"\nprocess_resident_memory_bytes " in text and b'\npython_gc_collections_total{generation="0"}' in text


@needs_prometheus
def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/alerts.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_prometheus
async def test_a_real_prometheus_scrapes_request_counts(sidecar: Sidecar) -> None:
    await send_predictions(sidecar, 5)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs: [{job_name: sidecar, static_configs: "
            f"[{{targets: ['127.0.0.1:{sidecar.admin_port}']}}]}}]\n"
        )
        process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            value = await query_until(port, 'sidecar_requests_total{model="classifier",code="200"}', timeout=60)
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert value == 5.0


async def query_until(port: int, query: str, timeout: float) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.request.quote(query)}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            body = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=5).read())
            result = json.loads(body)["data"]["result"]
            if result:
                return float(result[0]["value"][1])
        except OSError:
            pass
        await asyncio.sleep(0.5)
    return None
