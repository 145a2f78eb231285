"""The Anodot exporter: bucket files on disk, posts to a recording Anodot API, retries, shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from sidecar.export.anodot_sink import AnodotExporter, post_samples
from sidecar.export.settings import ExportSettings

from .anodot_format import check_sample
from .conftest import StartReceiver

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(url: str | None = None, **kwargs: Any) -> ExportSettings:
    return ExportSettings(anodot_bucket=60.0, anodot_url=url, anodot_token="secret-token" if url else None,
                          anodot_retries=2, **kwargs)


def samples_value(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("sidecar_export_anodot_samples_total", {"outcome": outcome}) or 0.0


async def test_each_bucket_is_written_to_a_timestamped_file_and_posted(tmp_path: Path,
                                                                       receiver_factory: StartReceiver) -> None:
    api = await receiver_factory(reply={"errors": []})
    registry = CollectorRegistry()
    requests = Counter("sidecar_things_total", "t", ["model"], registry=registry)
    clock = Clock(T0 + 5)
    exporter = AnodotExporter(settings(api.url + "/"), registry, tmp_path, clock=clock)
    await exporter.start()
    requests.labels("iris").inc(7)
    clock.now = T0 + 60
    path = await exporter.close_bucket()
    await exporter.stop(5.0)
    assert path == tmp_path / "anodot-20240501T120000Z.json"
    stored = json.loads(path.read_text())
    things = [s for s in stored if s["properties"]["what"] == "things"]
    assert things == [{"properties": {"what": "things", "target_type": "counter", "ver": "1", "model": "iris"},
                       "tags": {"source": ["tfs-sidecar"]}, "timestamp": T0, "value": 7.0}]
    for sample in stored:
        check_sample(sample)
    first = api.received[0]
    assert first.query == {"token": "secret-token", "protocol": "anodot20"}
    assert first.headers["content-type"].startswith("application/json")
    assert json.loads(first.body) == stored
    assert samples_value(registry, "written") >= len(stored)
    assert samples_value(registry, "posted") >= len(stored)
    assert samples_value(registry, "failed") == 0


async def test_without_a_token_buckets_are_only_written(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    Counter("sidecar_x_total", "x", registry=registry).inc()
    exporter = AnodotExporter(ExportSettings(anodot_bucket=60.0, anodot_url="http://127.0.0.1:9/"), registry,
                              tmp_path, clock=Clock(T0))
    await exporter.start()
    await exporter.stop()
    assert [p.name for p in tmp_path.iterdir()] == ["anodot-20240501T120000Z.json"]
    assert samples_value(registry, "posted") == 0


async def test_server_errors_are_retried_and_client_errors_are_not(tmp_path: Path,
                                                                   receiver_factory: StartReceiver) -> None:
    flaky = await receiver_factory(statuses=[503], reply={"errors": []})
    registry = CollectorRegistry()
    Counter("sidecar_x_total", "x", registry=registry).inc()
    exporter = AnodotExporter(settings(flaky.url), registry, tmp_path / "a", clock=Clock(T0))
    await exporter.start()
    await exporter.stop(5.0)
    assert len(flaky.received) == 2 and samples_value(registry, "posted") > 0

    refusing = await receiver_factory(status=401, reply={"error": "bad token"})
    registry = CollectorRegistry()
    Counter("sidecar_x_total", "x", registry=registry).inc()
    exporter = AnodotExporter(settings(refusing.url), registry, tmp_path / "b", clock=Clock(T0))
    await exporter.start()
    await exporter.stop(5.0)
    assert len(refusing.received) == 1
    assert samples_value(registry, "failed") > 0 and samples_value(registry, "posted") == 0
    assert (tmp_path / "b" / "anodot-20240501T120000Z.json").exists()  # kept for replay


async def test_samples_anodot_refuses_are_counted_as_failed(tmp_path: Path, receiver_factory: StartReceiver) -> None:
    api = await receiver_factory(reply={"errors": [{"error": "bad", "description": "too long", "index": 0}]})
    registry = CollectorRegistry()
    Counter("sidecar_a_total", "a", registry=registry).inc()
    Counter("sidecar_b_total", "b", registry=registry).inc()
    exporter = AnodotExporter(settings(api.url), registry, tmp_path, clock=Clock(T0))
    await exporter.start()
    await exporter.stop(5.0)
    assert samples_value(registry, "failed") == 1
    assert samples_value(registry, "posted") == samples_value(registry, "written") - 1


async def test_a_restart_inside_a_bucket_merges_into_its_file(tmp_path: Path) -> None:
    for increment in (2, 3):
        registry = CollectorRegistry()
        counter = Counter("sidecar_n_total", "n", registry=registry)
        exporter = AnodotExporter(settings(), registry, tmp_path, clock=Clock(T0 + 10))
        await exporter.start()
        counter.inc(increment)
        await exporter.stop()
    (path,) = tmp_path.iterdir()
    (sample,) = [s for s in json.loads(path.read_text()) if s["properties"]["what"] == "n"]
    assert sample["value"] == 5.0


async def test_buckets_close_on_their_own_at_the_boundary(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    Counter("sidecar_tick_total", "t", registry=registry).inc()
    exporter = AnodotExporter(ExportSettings(anodot_bucket=1.0), registry, tmp_path)
    await exporter.start()
    for _ in range(100):
        if any(tmp_path.iterdir()):
            break
        await asyncio.sleep(0.05)
    await exporter.stop()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names and all(name.startswith("anodot-") and name.endswith("Z.json") for name in names)


async def test_posts_are_split_into_chunks_of_at_most_a_thousand(receiver_factory: StartReceiver) -> None:
    api = await receiver_factory(reply={"errors": []})
    samples = [{"properties": {"what": "x", "i": str(i)}, "timestamp": T0, "value": 1.0} for i in range(2500)]
    async with aiohttp.ClientSession() as session:
        result = await post_samples(session, api.url, "t", samples, retries=0)
    assert result.posted == 2500 and result.failed == 0
    assert [len(json.loads(r.body)) for r in api.received] == [1000, 1000, 500]


async def test_problems_never_show_the_token(dead_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        result = await post_samples(session, dead_url, "secret-token", [{"value": 1}], retries=1, retry_base=0.01)
    assert result.failed == 1 and result.problems
    assert all("secret-token" not in problem for problem in result.problems)
