"""The contract both prediction stores keep (SQLite in the state directory, and a real redis-server)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.feedback.backends import open_store
from sidecar.feedback.store import PredictionColumns, PredictionRow, PredictionStore, StoreError

from .redis_server import running_redis


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PredictionStore]:
    if request.param == "sqlite":
        opened = open_store("sqlite", tmp_path, retention=3600, max_rows=10_000, key_prefix="t:")
        await opened.start()
        yield opened
        await opened.stop()
        return
    with running_redis(tmp_path) as url:
        opened = open_store(url, tmp_path, retention=3600, max_rows=1000, key_prefix="t:")
        await opened.start()
        yield opened
        await opened.stop()


def rows(prediction_id: str, values: list[str | float], model: str = "m", task: str = "multiclass",
         when: float | None = None) -> list[PredictionRow]:
    when = time.time() if when is None else when
    return [PredictionRow(prediction_id, index, model, task, value, when) for index, value in enumerate(values)]


async def test_stored_rows_are_found_by_prediction_id_with_their_values_and_types(store: PredictionStore) -> None:
    store.put(rows("a", ["2", "cat", "0"]))
    store.put(rows("b", [0.25, 3.0], model="r", task="regression"))
    await store.flush()
    found = await store.lookup(["a", "b", "missing"])
    assert set(found) == {"a", "b"}
    assert found["a"].model == "m" and found["a"].task == "multiclass"
    assert found["a"].instances == {0: "2", 1: "cat", 2: "0"}
    assert found["b"].instances == {0: 0.25, 1: 3.0}
    assert all(isinstance(value, float) for value in found["b"].instances.values())
    assert found["b"].time == pytest.approx(time.time(), abs=5)


async def test_columns_are_stored_as_their_rows(store: PredictionStore) -> None:
    store.put(PredictionColumns("m", ["a", "b", "a"], [0, 0, 1], ["multiclass", "binary", "multiclass"],
                                ["cat", 0.75, "dog"], time.time()))
    await store.flush()
    found = await store.lookup(["a", "b"])
    assert found["a"].instances == {0: "cat", 1: "dog"} and found["a"].task == "multiclass"
    assert found["b"].instances == {0: 0.75} and found["b"].task == "binary"


def test_columns_iterate_as_rows_and_give_one_prediction_s_record() -> None:
    columns = PredictionColumns("m", ["a", "b", "a"], [0, 0, 1], ["multiclass", "binary", "multiclass"],
                                ["cat", 0.75, "dog"], 12.5)
    assert len(columns) == 3
    unrecorded = (None,) * 5  # version, outliers, issues and the two scores: not recorded
    assert list(columns) == [("a", 0, "m", "multiclass", "cat", 12.5, *unrecorded),
                             ("b", 0, "m", "binary", 0.75, 12.5, *unrecorded),
                             ("a", 1, "m", "multiclass", "dog", 12.5, *unrecorded)]
    record = columns.record("a")
    assert record is not None and record.instances == {0: "cat", 1: "dog"}
    assert (record.model, record.task, record.time) == ("m", "multiclass", 12.5)
    assert columns.record("missing") is None


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        PredictionColumns("m", ["a", "b"], [0], ["binary"], [0.5], 0.0)


async def test_a_claim_runs_after_every_put_queued_before_it(store: PredictionStore) -> None:
    store.put(rows("c", ["1"]))
    assert await store.claim([("c", 0)]) == [True]
    assert (await store.lookup(["c"]))["c"].instances == {0: "1"}


async def test_only_the_first_claim_of_an_instance_wins(store: PredictionStore) -> None:
    store.put(rows("a", ["1", "2"]))
    assert await store.claim([("a", 0), ("a", 1), ("a", 0)]) == [True, True, False]
    assert await store.claim([("a", 1), ("a", 2)]) == [False, True]


async def test_a_lookup_of_many_ids_answers_all_of_them(store: PredictionStore) -> None:
    ids = [f"id-{index}" for index in range(1200)]
    for prediction_id in ids:
        store.put(rows(prediction_id, ["1"]))
    await store.flush()
    assert len(await store.lookup(ids)) == 1200


async def test_the_writer_reports_written_rows_on_the_event_loop(tmp_path: Path) -> None:
    reports: list[tuple[int, bool]] = []
    store = open_store("sqlite", tmp_path, retention=3600, max_rows=1000, key_prefix="t:")
    await store.start(lambda written, ok: reports.append((written, ok)))
    try:
        store.put(rows("a", ["1", "2"]))
        store.put(rows("b", ["1"]))
        await store.flush()
        assert sum(count for count, _ in reports) == 3 and all(ok for _, ok in reports)
    finally:
        await store.stop()


async def test_an_unreachable_redis_fails_start_with_the_address(tmp_path: Path) -> None:
    store = open_store("redis://127.0.0.1:1/0", tmp_path, retention=60, max_rows=100, key_prefix="t:")
    with pytest.raises(StoreError, match=re.escape("cannot reach redis://127.0.0.1:1/0")):
        await store.start()
