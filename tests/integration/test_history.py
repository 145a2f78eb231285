"""The history through a real sidecar and the testbed's classifier: buckets of time and of instances hold numpy's
statistics of what was posted, the labels of feedback joined meanwhile, the drift windows and the outliers the
drill-down counted; they survive a restart and reach the Anodot files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from sidecar.app import Sidecar
from sidecar.testbed.data import classifier_batch
from tests.support.helpers import eventually, metric
from tests.support.sidecars import StartSidecar, rest_only, sidecar_factory
from tests.support.testbed import TestbedProcess

pytestmark = pytest.mark.slow
FEATURES = [f"features[{i}]" for i in range(4)]  # the signature names the input


@pytest.fixture
async def start_sidecar(testbed: TestbedProcess, tmp_path: Path) -> AsyncIterator[StartSidecar]:
    async with sidecar_factory(rest_only(testbed.rest_url, tmp_path / "state"), result_interval="0.1",
                               reference_size=100, window_size=100) as start:
        yield start


async def predict(session: aiohttp.ClientSession, sidecar: Sidecar, rows: np.ndarray) -> tuple[str, np.ndarray]:
    url = f"http://127.0.0.1:{sidecar.rest_port}/v1/models/classifier:predict"
    async with session.post(url, json={"instances": rows.tolist()}) as response:
        assert response.status == 200, await response.text()
        return response.headers["X-Prediction-Id"], np.asarray((await response.json())["predictions"])


async def history(session: aiohttp.ClientSession, sidecar: Sidecar, **params: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier/history"
    async with session.get(url, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def wait_for_buckets(session: aiohttp.ClientSession, sidecar: Sidecar, count: int,
                           model: str = "classifier") -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/{model}/history"
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        async with session.get(url) as response:  # 404 until the analysis has seen the model
            buckets = (await response.json())["buckets"] if response.status == 200 else []
        if len(buckets) >= count:
            return buckets  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} history buckets after 60 s")


def assert_numpy_statistics(inputs: dict[str, Any], rows: np.ndarray) -> None:
    values = rows.astype(np.float64)
    for column, name in enumerate(FEATURES):
        entry = dict(inputs[name])
        column_values = values[:, column]
        p5, p50, p95 = np.percentile(column_values, [5, 50, 95])
        expected = {"count": len(rows), "missing": 0, "mean": column_values.mean(), "std": column_values.std(),
                    "min": column_values.min(), "p5": p5, "p50": p50, "p95": p95, "max": column_values.max()}
        assert entry.pop("kind") == "numeric"
        assert entry == pytest.approx(expected, rel=1e-9), name


def class_counts(predictions: np.ndarray) -> dict[str, int]:
    classes, counts = np.unique(predictions.argmax(axis=1), return_counts=True)
    return {str(k): int(n) for k, n in zip(classes, counts, strict=True)}


async def test_count_buckets_hold_numpy_statistics_labels_drift_and_outliers_and_survive_a_restart(
        start_sidecar: StartSidecar, tmp_path: Path) -> None:
    sidecar = await start_sidecar(history_bucket_instances=100, anodot_bucket="60s")
    rows, truth = classifier_batch(300, seed=11)
    answers: list[tuple[str, np.ndarray]] = []
    async with aiohttp.ClientSession() as session:
        for start in range(0, 200, 50):
            answers.append(await predict(session, sidecar, rows[start:start + 50]))
        await wait_for_buckets(session, sidecar, 2)
        for number, (prediction_id, _) in enumerate(answers[:2]):  # truths for the first 100 instances
            document = {"prediction_id": prediction_id, "truth": truth[50 * number:50 * (number + 1)].tolist()}
            async with session.post(f"http://127.0.0.1:{sidecar.rest_port}/v1/feedback", json=document) as response:
                assert response.status == 200, await response.text()
        await eventually(lambda: metric(sidecar.registry, "sidecar_feedback_total", model="classifier",
                                        outcome="joined") == 100)
        for start in range(200, 300, 50):
            answers.append(await predict(session, sidecar, rows[start:start + 50]))
        buckets = await wait_for_buckets(session, sidecar, 3)
        page = await history(session, sidecar)
        assert page["bucket"] == {"kind": "count", "instances": 100}
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/classifier") as response:
            monitor = await response.json()

    predictions = np.concatenate([answer[1] for answer in answers])
    for number, bucket in enumerate(buckets):
        part = slice(100 * number, 100 * (number + 1))
        assert (bucket["instances"], bucket["requests"]) == (100, 2)
        assert_numpy_statistics(bucket["inputs"], rows[part])
        assert bucket["outputs"]["task"] == "classification"
        counted = {key: entry["count"] for key, entry in bucket["outputs"]["classes"].items() if entry["count"]}
        assert counted == class_counts(predictions[part])
        for key, entry in bucket["outputs"]["classes"].items():
            assert entry["mean_probability"] == pytest.approx(predictions[part, int(key)].mean())
    assert buckets[0]["labels"] is None and buckets[1]["labels"] is None
    labels = buckets[2]["labels"]
    truths, labelled = truth[:100], predictions[:100].argmax(axis=1)
    assert labels["count"] == 100
    assert labels["classes"] == {str(k): int(n) for k, n in zip(*np.unique(truths, return_counts=True), strict=True)}
    assert labels["accuracy"] == pytest.approx(np.mean(truths == labelled))
    # the reference is the first bucket's rows; each later bucket closes one drift window and scores its rows
    assert buckets[0]["outliers"].get("mahalanobis", {"instances": 0})["instances"] == 0
    assert buckets[0]["drift"] == {}
    for bucket in buckets[1:]:
        assert bucket["drift"]["feature_drift"]["windows"] == 1
        assert bucket["outliers"]["mahalanobis"]["instances"] == 100
    counted = sum(bucket["outliers"].get("mahalanobis", {"outliers": 0})["outliers"] for bucket in buckets)
    assert counted == monitor["outliers"]["mahalanobis"]["outliers"]  # what the drill-down counted

    await sidecar.stop()
    anodot = [sample for path in sorted((tmp_path / "state" / "anodot").glob("anodot-*.json"))
              for sample in json.loads(path.read_text())]
    means = {(sample["timestamp"], sample["properties"]["feature"]): sample["value"] for sample in anodot
             if sample["properties"]["what"] == "bucket_input_mean"}
    latest = {int(bucket["start"]): bucket for bucket in buckets}  # Anodot counts seconds: one bucket per second
    for second, bucket in latest.items():
        assert means[(second, "features_0_")] == pytest.approx(bucket["inputs"][FEATURES[0]]["mean"])

    restarted = await start_sidecar(history_bucket_instances=100)
    async with aiohttp.ClientSession() as session:
        assert (await history(session, restarted))["buckets"] == buckets  # before any traffic: from the store


async def test_time_buckets_hold_numpy_statistics_of_each_seconds_requests(start_sidecar: StartSidecar) -> None:
    seconds = 2.0
    sidecar = await start_sidecar(history_bucket_seconds=seconds)
    rows, _ = classifier_batch(120, seed=12)
    async with aiohttp.ClientSession() as session:
        sent: list[tuple[float, np.ndarray]] = []
        for number in range(3):  # one request in the middle of each bucket
            await asyncio.sleep(seconds - time.time() % seconds + seconds / 2)
            part = rows[40 * number:40 * (number + 1)]
            sent.append((time.time() // seconds * seconds, part))
            await predict(session, sidecar, part)
        buckets = await wait_for_buckets(session, sidecar, 3)
        assert (await history(session, sidecar))["bucket"] == {"kind": "time", "seconds": seconds}
    for bucket, (start, part) in zip(buckets, sent, strict=True):
        assert (bucket["start"], bucket["end"]) == (start, start + seconds)
        assert (bucket["instances"], bucket["requests"]) == (40, 1)
        assert_numpy_statistics(bucket["inputs"], part)


async def test_a_text_input_is_named_by_its_strings_in_drift_windows_and_buckets_and_its_excluded_columns_left_out(
        numpy_testbed: TestbedProcess, tmp_path: Path) -> None:
    """The testbed's `multi` model (3 floats and a string `tag`): its tag is analysed by category, so the drill-down
    and the history name the tags, a tag first seen after the reference included; the tag's text summary, which the
    analysis excludes, is in no bucket."""
    rng = np.random.default_rng(4)
    old, new = ["gov", "private", "self-employed"], ["gov", "contract", "contract"]
    tags = [old[i] for i in rng.integers(0, 3, size=200)] + [new[i] for i in rng.integers(0, 3, size=200)]
    x = rng.normal(size=(400, 3))
    url = "/v1/models/multi:predict"
    async with sidecar_factory(rest_only(numpy_testbed.rest_url, tmp_path / "state"), result_interval="0.1",
                               reference_size=200, window_size=200, history_bucket_instances=100) as start:
        sidecar = await start()
        async with aiohttp.ClientSession() as session:
            for first in range(0, 400, 20):
                rows = [{"x": x[i].tolist(), "tag": tags[i]} for i in range(first, first + 20)]
                async with session.post(f"http://127.0.0.1:{sidecar.rest_port}{url}",
                                        json={"instances": rows}) as response:
                    assert response.status == 200, await response.text()
            buckets = await wait_for_buckets(session, sidecar, 4, model="multi")
            await eventually(lambda: metric(sidecar.registry, "sidecar_drift_checks_total", model="multi",
                                            detector="feature_drift") == 1)
            drill = {}
            for extremes in ("false", "true"):
                async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/v1/monitor/multi",
                                       params={"extremes": extremes}) as response:
                    drill[extremes] = await response.json()
    decisions = drill["false"]["decisions"]["inputs"]["tag"]
    assert decisions["kinds"] == {"categorical": 1, "excluded": 4}
    for snapshot in drill.values():
        [tag] = [f for f in snapshot["detectors"]["feature_drift"]["features"] if f["name"] == "tag"]
        assert tag["kind"] == "categorical" and tag["drift"]
        reference_shares = {name: tags[:200].count(name) / 200 for name in old}
        assert tag["reference"] == pytest.approx({"count": 200, **reference_shares})
        assert tag["current"] == pytest.approx({"count": 200, "gov": tags[200:].count("gov") / 200,
                                                "__other__": tags[200:].count("contract") / 200})
    excluded = drill["false"]["windows"]["history"]["excluded"]
    assert excluded["columns"] == ["tag#length", "tag#letters", "tag#digits", "tag#spaces"]
    for number, bucket in enumerate(buckets):
        part = tags[100 * number:100 * (number + 1)]
        assert bucket["inputs"]["tag"]["levels"] == {name: part.count(name) for name in set(part)}
    assert not any(name.startswith("tag#") for bucket in buckets[2:] for name in bucket["inputs"])  # after reference
