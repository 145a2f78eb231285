"""The contract both prediction stores keep (SQLite in the state directory, and a real redis-server)."""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.feedback.backends import open_store
from sidecar.feedback.store import PredictionColumns, PredictionRow, PredictionStore, StoredInstance, StoreError
from sidecar.messages.results import PredictionDetails, StoredPredictions

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


def detailed(prediction_id: str) -> PredictionColumns:
    """Three instances: one flagged by Mahalanobis (and scored by the autoencoder), one scored and not flagged,
    one not scored (a NaN in its input), with their data-quality issues."""
    nan = float("nan")
    details = PredictionDetails(["3"] * 3, ["Ma", "m", ""], ["a", "", "nb"],
                                {"mahalanobis": [41.5, 1.25, nan], "autoencoder": [0.5, nan, nan]})
    return PredictionColumns("m@3", [prediction_id] * 3, [0, 1, 2], ["multiclass"] * 3, ["2", "0", "1"],
                             time.time(), details)


async def test_the_analysis_details_and_the_joined_truths_are_stored_with_the_prediction(
        store: PredictionStore) -> None:
    store.put(detailed("d"))
    assert await store.claim([("d", 0), ("d", 2)], ["2", "0"]) == [True, True]
    assert await store.claim([("d", 0)], ["1"]) == [False]  # a duplicate keeps the first truth
    record = await store.describe("d")
    assert record is not None
    assert (record.model, record.version) == ("m@3", "3")
    assert record.time == pytest.approx(time.time(), abs=5)
    assert record.instances == {
        0: StoredInstance("multiclass", "2", "Ma", "a", {"mahalanobis": 41.5, "autoencoder": 0.5}),
        1: StoredInstance("multiclass", "0", "m", "", {"mahalanobis": 1.25}),
        2: StoredInstance("multiclass", "1", "", "nb", {}),
    }
    assert record.truths == {0: "2", 2: "0"}
    assert await store.describe("missing") is None
    assert (await store.lookup(["d"]))["d"].instances == {0: "2", 1: "0", 2: "1"}  # feedback's lookup unchanged


async def test_rows_without_details_and_claims_without_truths_read_as_not_recorded(store: PredictionStore) -> None:
    store.put(rows("plain", [0.25, 3.0], model="r", task="regression"))
    assert await store.claim([("plain", 1)]) == [True]
    record = await store.describe("plain")
    assert record is not None and record.version is None
    assert record.instances == {0: StoredInstance("regression", 0.25, None, None, {}),
                                1: StoredInstance("regression", 3.0, None, None, {})}
    assert record.truths == {1: None}


def test_columns_describe_one_prediction_before_it_is_written() -> None:
    columns = detailed("d")
    record = columns.describe("d")
    assert record is not None and record.version == "3" and record.truths == {}
    assert record.instances[0].scores == {"mahalanobis": 41.5, "autoencoder": 0.5}
    assert record.instances[2] == StoredInstance("multiclass", "1", "", "nb", {})
    assert columns.describe("other") is None


def test_details_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="as many rows"):
        PredictionColumns("m", ["a"], [0], ["binary"], [0.5], 0.0, PredictionDetails.unrecorded(2))


async def test_a_row_writer_taken_elsewhere_writes_what_lookups_claims_and_descriptions_see(
        store: PredictionStore) -> None:
    writer = pickle.loads(pickle.dumps(store.row_writer()))  # as a worker process receives it: no connection yet
    try:
        nan = float("nan")
        details = PredictionDetails(["2", "2"], ["M", ""], ["", "n"], {"mahalanobis": [30.5, nan],
                                                                        "autoencoder": [nan, nan]})
        writer.write([StoredPredictions("m", ["w", "w"], [0, 1], ["multiclass"] * 2, ["cat", "dog"], details),
                      StoredPredictions("r", ["x"], [0], ["regression"], [2.5])])
    finally:
        writer.close()
    found = await store.lookup(["w", "x"])
    assert found["w"].instances == {0: "cat", 1: "dog"} and found["x"].instances == {0: 2.5}
    assert found["w"].time == pytest.approx(time.time(), abs=5)
    assert await store.claim([("w", 1)], ["dog"]) == [True]
    record = await store.describe("w")
    assert record is not None and record.version == "2" and record.truths == {1: "dog"}
    assert record.instances[0] == StoredInstance("multiclass", "cat", "M", "", {"mahalanobis": 30.5})


async def test_a_row_writer_keeps_every_value_s_type_with_and_without_non_finite_scores(
        store: PredictionStore) -> None:
    writer = store.row_writer()
    try:
        finite = PredictionDetails(["3", "3"], ["m", "A"], ["", "q"], {"mahalanobis": [1.5, 2.0],
                                                                    "autoencoder": [0.25, 9.5]})
        writer.write([StoredPredictions("r", ["y"], [0], ["regression"], [2.0]),
                      StoredPredictions("m", ["z", "z"], [0, 1], ["multiclass"] * 2, ["1", "2"], finite)])
        inf = PredictionDetails(["3"], ["m"], [""], {"mahalanobis": [float("inf")], "autoencoder": [1.0]})
        writer.write([StoredPredictions("m", ["i"], [0], ["binary"], [0.5], inf)])
    finally:
        writer.close()
    found = await store.lookup(["y", "z", "i"])
    assert found["y"].instances == {0: 2.0} and isinstance(found["y"].instances[0], float)
    assert found["z"].instances == {0: "1", 1: "2"} and found["i"].instances == {0: 0.5}
    record = await store.describe("z")
    assert record is not None and record.version == "3" and record.model == "m"
    assert record.instances == {0: StoredInstance("multiclass", "1", "m", "", {"mahalanobis": 1.5}),
                                1: StoredInstance("multiclass", "2", "A", "q", {"autoencoder": 9.5})}
    described = await store.describe("i")
    assert described is not None and described.instances[0].scores == {"mahalanobis": float("inf")}
