"""Labels of a history bucket: the truths joined before its end, with numpy's accuracy, macro F1, RMSE and MAE;
the recorder folds them into the model's next bucket and queues the bucket for the store and the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sidecar.history.labels import PendingLabels, summarise
from sidecar.history.recorder import HistoryRecorder
from sidecar.history.store import HistoryStore
from sidecar.messages.results import HistoryBucket, JoinedTruth


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    scores = []
    for label in np.union1d(truth, predicted):
        hits = np.sum((truth == label) & (predicted == label))
        scores.append(2 * hits / (np.sum(truth == label) + np.sum(predicted == label)))
    return float(np.mean(scores))


def test_classification_labels_match_numpy() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 200).astype(str)
    predicted = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 4, 200).astype(str))
    summary = summarise([JoinedTruth("m", "multiclass", t, p, 1.0) for t, p in zip(truth, predicted, strict=True)],
                        max_levels=2)
    levels, counts = np.unique(truth, return_counts=True)
    top = sorted(zip(levels.tolist(), counts.tolist(), strict=True), key=lambda item: (-item[1], item[0]))
    assert summary["count"] == 200
    assert summary["classes"] == {top[0][0]: top[0][1], top[1][0]: top[1][1], "__other__": top[2][1]}
    assert summary["accuracy"] == pytest.approx(np.mean(truth == predicted))
    assert summary["f1"] == pytest.approx(macro_f1(truth, predicted))


def test_regression_labels_match_numpy() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(size=100)
    predicted = truth + rng.normal(0.5, 1.0, size=100)
    summary = summarise([JoinedTruth("m", "regression", float(t), float(p), 1.0)
                         for t, p in zip(truth, predicted, strict=True)], max_levels=10)
    assert summary == {"count": 100, "rmse": pytest.approx(np.sqrt(np.mean((predicted - truth) ** 2))),
                       "mae": pytest.approx(np.mean(np.abs(predicted - truth)))}


def test_a_bucket_takes_the_truths_joined_before_its_end() -> None:
    pending = PendingLabels(max_levels=10)
    for when, truth in ((10.0, "a"), (20.0, "b"), (70.0, "a")):
        pending.add(JoinedTruth("m", "binary", truth, "a", when))
    first = pending.take("m", 60.0)
    assert first is not None and first["classes"] == {"a": 1, "b": 1} and first["accuracy"] == 0.5
    assert pending.take("other", 60.0) is None
    second = pending.take("m", 120.0)
    assert second is not None and second["count"] == 1
    assert pending.take("m", 180.0) is None


async def test_the_recorder_stores_buckets_with_their_labels(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite", retention=1e12, max_rows=100)
    await store.start()
    try:
        recorder = HistoryRecorder(store, max_levels=10, export=True)
        recorder.add_truths([JoinedTruth("m", "binary", "1", "1", 1005.0), JoinedTruth("m", "binary", "0", "1",
                                                                                       1007.0)])
        recorder.add_bucket(HistoryBucket("m", {"kind": "time", "seconds": 60.0}, 960.0, 1020.0, 3, 1,
                                          {"x": {"kind": "numeric", "mean": float("nan")}}, None, {}, {}, True))
        page = await store.page("m", 0.0, 1e18, None, 10)
        [stored] = page.buckets
        assert stored["labels"] == {"count": 2, "classes": {"0": 1, "1": 1}, "accuracy": 0.5,
                                    "f1": pytest.approx((0 + 2 / 3) / 2)}
        assert stored["inputs"]["x"]["mean"] is None and stored["sampled"] is True
        [(model, exported)] = recorder.take_exported()
        assert model == "m" and exported["start"] == 960.0
        assert recorder.take_exported() == []
    finally:
        await store.stop()
