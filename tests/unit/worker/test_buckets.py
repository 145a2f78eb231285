"""History buckets in the worker: statistics equal numpy's on known streams, for time and count buckets, through
the bucketer alone and through a model state fed real REST exchanges."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.detectors.summaries import LevelCounts, NumericSummary
from sidecar.messages.results import HistoryBucket, ModelStatus
from sidecar.worker.buckets import BUCKET_GRACE_SECONDS, BucketColumns, BucketOutputs, Buckets, OutlierRows
from sidecar.worker.settings import AnalysisSettings
from sidecar.worker.state import AnalysisState
from tests.support.traffic import FEATURES, named_record, rest_record, softmax_model

NUMERIC = BucketColumns.first(["a", "b"])


def expected_numeric(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    p5, p50, p95 = np.percentile(finite, [5, 50, 95])
    return {"kind": "numeric", "count": values.size, "missing": values.size - finite.size, "mean": finite.mean(),
            "std": finite.std(), "min": finite.min(), "p5": p5, "p50": p50, "p95": p95, "max": finite.max()}


def assert_summary(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, str):
            assert actual[key] == value
        else:
            assert actual[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def feed(buckets: Buckets, inputs: np.ndarray, times: np.ndarray, block: int = 7,
         columns: BucketColumns = NUMERIC, outputs: BucketOutputs | None = None) -> list[HistoryBucket]:
    """Rows in blocks of `block`, each row its own request."""
    closed: list[HistoryBucket] = []
    for start in range(0, inputs.shape[0], block):
        part = slice(start, start + block)
        view = None if outputs is None else outputs._replace(values=outputs.values[part])
        closed.extend(buckets.add(inputs[part], times[part], np.ones(inputs[part].shape[0], dtype=bool), columns,
                                  view))
    return closed


def test_time_buckets_hold_numpy_statistics_of_their_rows() -> None:
    rng = np.random.default_rng(1)
    inputs = rng.normal(3.0, 2.0, size=(500, 2))
    inputs[::37, 1] = np.nan
    times = np.sort(rng.uniform(1000.0, 1030.0, size=500))
    buckets = Buckets("m", {"kind": "time", "seconds": 10.0}, max_levels=10, sample_rows=10_000)
    closed = feed(buckets, inputs, times)
    closed += buckets.poll(1030.0 + BUCKET_GRACE_SECONDS)
    assert [(b.start, b.end) for b in closed] == [(1000.0, 1010.0), (1010.0, 1020.0), (1020.0, 1030.0)]
    for bucket in closed:
        rows = (times >= bucket.start) & (times < bucket.end)
        assert bucket.instances == bucket.requests == int(rows.sum())
        assert bucket.bucket == {"kind": "time", "seconds": 10.0}
        assert not bucket.sampled
        for column, name in enumerate("ab"):
            assert_summary(bucket.inputs[name], expected_numeric(inputs[rows, column]))


def test_a_time_bucket_waits_for_its_grace_and_late_rows_join_the_open_bucket() -> None:
    buckets = Buckets("m", {"kind": "time", "seconds": 10.0}, max_levels=10, sample_rows=100)
    ones = np.ones((1, 2))
    assert buckets.add(ones, np.array([1005.0]), np.array([True]), NUMERIC) == []
    assert buckets.poll(1010.0 + BUCKET_GRACE_SECONDS - 0.1) == []
    assert buckets.add(ones * 2, np.array([1001.0]), np.array([True]), NUMERIC) == []  # late: same open bucket
    [first] = buckets.poll(1010.0 + BUCKET_GRACE_SECONDS)
    assert first.instances == 2 and first.inputs["a"]["mean"] == 1.5
    assert buckets.add(ones * 5, np.array([1009.0]), np.array([True]), NUMERIC) == []  # its bucket has gone
    [second] = buckets.poll(1020.0 + BUCKET_GRACE_SECONDS)
    assert (second.start, second.end, second.inputs["a"]["mean"]) == (1010.0, 1020.0, 5.0)


def test_count_buckets_close_every_n_instances_with_numpy_statistics() -> None:
    rng = np.random.default_rng(2)
    inputs = rng.exponential(size=(1050, 2))
    times = np.linspace(0.0, 100.0, 1050)
    buckets = Buckets("m", {"kind": "count", "instances": 250}, max_levels=10, sample_rows=10_000)
    closed = feed(buckets, inputs, times, block=33)
    assert [bucket.instances for bucket in closed] == [250] * 4
    assert buckets.poll(1e12) == []  # a count bucket waits for its instances, whatever the time
    for number, bucket in enumerate(closed):
        rows = slice(250 * number, 250 * (number + 1))
        assert (bucket.start, bucket.end) == (times[rows][0], times[rows][-1])
        assert bucket.bucket == {"kind": "count", "instances": 250}
        for column, name in enumerate("ab"):
            assert_summary(bucket.inputs[name], expected_numeric(inputs[rows, column]))


def test_beyond_the_sample_rows_percentiles_are_sampled_and_the_rest_stays_exact() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(20_000, 1))
    summary = NumericSummary(1, capacity=2_000, rng=np.random.default_rng(4))
    for start in range(0, 20_000, 333):
        summary.add(values[start:start + 333])
    entry = summary.summary(0)
    assert summary.sampled
    assert entry["count"] == 20_000 and entry["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert entry["std"] == pytest.approx(values.std(), rel=1e-9)
    assert (entry["min"], entry["max"]) == (values.min(), values.max())
    for key, q in (("p5", 5), ("p50", 50), ("p95", 95)):
        assert entry[key] == pytest.approx(np.percentile(values, q), abs=0.12)


def test_categorical_levels_are_counted_and_bounded() -> None:
    column = np.array([0, 1, 1, 2, 2, 2, 3, np.nan] * 10)
    counts = LevelCounts(max_levels=2)
    counts.add(column[:30])
    counts.add(column[30:])
    summary = counts.summary(["red", "green", "blue", "grey"])
    assert summary == {"kind": "categorical", "count": 80, "missing": 10,
                       "levels": {"blue": 30, "green": 20, "__other__": 20}}


def test_outputs_of_a_classifier_and_a_regressor() -> None:
    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(300, FEATURES))
    probabilities = softmax_model(inputs)
    times = np.full(300, 1005.0)
    columns = BucketColumns.first([f"x{i}" for i in range(FEATURES)])
    buckets = Buckets("m", {"kind": "time", "seconds": 10.0}, max_levels=10, sample_rows=1000)
    feed(buckets, inputs, times, columns=columns, outputs=BucketOutputs("classification", probabilities, False, None))
    [bucket] = buckets.poll(2000.0)
    predicted = probabilities.argmax(axis=1)
    assert bucket.outputs is not None and bucket.outputs["task"] == "classification"
    for k in range(3):
        entry = bucket.outputs["classes"][str(k)]
        assert entry["count"] == int((predicted == k).sum())
        assert entry["mean_probability"] == pytest.approx(probabilities[:, k].mean())

    values = inputs[:, :1] * 3.0 + 1.0
    regression = Buckets("r", {"kind": "count", "instances": 300}, max_levels=10, sample_rows=1000)
    [bucket] = feed(regression, inputs, times, columns=columns, outputs=BucketOutputs("regression", values, False,
                                                                                      None))
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    assert bucket.outputs == {"task": "regression", "count": 300, "mean": pytest.approx(values.mean()),
                              "std": pytest.approx(values.std()), "p5": pytest.approx(p5),
                              "p50": pytest.approx(p50), "p95": pytest.approx(p95)}


def test_drift_verdicts_and_outliers_go_to_their_bucket() -> None:
    buckets = Buckets("m", {"kind": "time", "seconds": 10.0}, max_levels=10, sample_rows=100)
    rows = np.zeros((4, 2))
    verdict = OutlierRows(np.array([True, True, True, False]), np.array([False, True, False, False]))
    buckets.add(rows, np.full(4, 1001.0), np.array([True, False, False, True]), NUMERIC, None, {"mahalanobis": verdict})
    buckets.add_drift("feature_drift", 1003.0, True, 0.001)
    buckets.add_drift("feature_drift", 1004.0, False, 0.2)
    buckets.add_drift("feature_drift", 1012.0, False, 0.5)  # a window ending in the next bucket
    [first] = buckets.add(rows[:1], np.array([1015.0]), np.array([True]), NUMERIC)
    assert first.requests == 2
    assert first.outliers == {"mahalanobis": {"instances": 3, "outliers": 1}}
    assert first.drift == {"feature_drift": {"windows": 2, "drifted": 1, "min_p_value": 0.001}}
    [second] = buckets.poll(2000.0)
    assert second.drift == {"feature_drift": {"windows": 1, "drifted": 0, "min_p_value": 0.5}}


def test_a_model_state_sends_buckets_of_what_it_decoded(tmp_path: Path) -> None:
    """REST exchanges through the real codec: count buckets of 120 instances, compared with numpy on the rows."""
    settings = replace(AnalysisSettings(reference_size=100, window_size=100), history_bucket_instances=120)
    state = AnalysisState(0, settings, tmp_path)
    rng = np.random.default_rng(6)
    inputs = rng.normal(size=(400, FEATURES))
    found: list[HistoryBucket] = []
    for n in range(40):
        rows = inputs[10 * n:10 * (n + 1)]
        out, _, _ = state.process([rest_record("iris", rows, prediction_id=f"id-{n}", captured=1000.0 + n)])
        found.extend(result for result in out if isinstance(result, HistoryBucket))
    assert [bucket.instances for bucket in found] == [120, 120, 120]
    assert [bucket.requests for bucket in found] == [12, 12, 12]
    for number, bucket in enumerate(found):
        rows = inputs[120 * number:120 * (number + 1)]
        for column in range(FEATURES):
            assert_summary(bucket.inputs[f"input[{column}]"], expected_numeric(rows[:, column]))
        predicted = softmax_model(rows).argmax(axis=1)
        assert bucket.outputs is not None
        assert {key: entry["count"] for key, entry in bucket.outputs["classes"].items() if entry["count"]} == {
            str(k): int(count) for k, count in zip(*np.unique(predicted, return_counts=True), strict=True)}
    assert "mahalanobis" in found[-1].outliers  # the reference completed at 100 instances
    assert found[0].outliers["mahalanobis"]["instances"] == 20


def test_coded_levels_are_named_when_the_bucket_closes_so_values_new_to_it_are_named_too() -> None:
    vocabulary = ["gov", "private"]
    columns = BucketColumns(["workclass"], [True], [0], lambda position: vocabulary)
    buckets = Buckets("m", {"kind": "count", "instances": 7}, max_levels=3, sample_rows=100)
    assert feed(buckets, np.array([[0.0], [1.0], [0.0]]), np.arange(3.0), columns=columns) == []
    vocabulary.append("contract")  # a value the vocabulary met after the bucket began
    vocabulary.append("__other__")  # a full vocabulary names so the code later strings share
    [bucket] = feed(buckets, np.array([[2.0], [2.0], [3.0], [3.0]]), np.arange(4.0), columns=columns)
    assert bucket.inputs == {"workclass": {"kind": "categorical", "count": 7, "missing": 0,  # with the level beyond
                                           "levels": {"gov": 2, "contract": 2, "__other__": 2 + 1}}}


def census(rng: np.random.Generator, count: int, workclass: list[str]) -> list[dict[str, Any]]:
    return [{"workclass": workclass[int(rng.integers(0, len(workclass)))], "city": f"c{int(rng.integers(0, 200))}",
             "age": float(rng.normal(40.0, 10.0))} for _ in range(count)]


def test_a_model_state_names_text_levels_and_leaves_out_what_the_analysis_excludes(tmp_path: Path) -> None:
    """Strings through the real codec, time buckets of 10 s: `workclass` (4 levels) is analysed by its category code,
    `city` (200 levels) by its text summary; a workclass first seen in the middle of a bucket is named."""
    settings = replace(AnalysisSettings(reference_size=100, window_size=100), history_bucket_seconds=10.0)
    state = AnalysisState(0, settings, tmp_path)
    rng = np.random.default_rng(8)
    old = ["gov", "private", "self", "never"]
    batches = [census(rng, 10, old if n < 15 else [*old, "contract"]) for n in range(20)]
    found: list[HistoryBucket] = []
    statuses: list[ModelStatus] = []
    for n, rows in enumerate([*batches, census(rng, 1, old)]):
        out, _, _ = state.process([named_record("census", rows, prediction_id=f"id-{n}", captured=1000.0 + n)])
        found.extend(result for result in out if isinstance(result, HistoryBucket))
        statuses.extend(result for result in out if isinstance(result, ModelStatus))
    first, second = found
    assert set(first.inputs["city"]["levels"]) <= {f"c{n}" for n in range(200)} | {"__other__"}  # no reference yet
    rows = [row for batch in batches[10:] for row in batch]
    assert list(second.inputs) == ["age", "city#length", "city#letters", "city#digits", "city#spaces", "workclass"]
    names, counts = np.unique([row["workclass"] for row in rows], return_counts=True)
    assert second.inputs["workclass"]["levels"] == dict(zip(names.tolist(), counts.tolist(), strict=True))
    assert "contract" in second.inputs["workclass"]["levels"]
    lengths = np.array([len(row["city"]) for row in rows], dtype=np.float64)
    assert_summary(second.inputs["city#length"], expected_numeric(lengths))
    assert_summary(second.inputs["age"], expected_numeric(np.array([row["age"] for row in rows])))
    excluded = statuses[-1].windows["history"]["excluded"]
    assert excluded["count"] == 5 and excluded["columns"] == [
        "city", "workclass#length", "workclass#letters", "workclass#digits", "workclass#spaces"]
    assert "more than 20 levels" in excluded["reason"]
