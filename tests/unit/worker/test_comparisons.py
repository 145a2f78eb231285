"""A worker compares a shadow's answers with the primary's, instance by instance, and versions with a baseline."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import ModelError, Predictions, Result, ShadowBatch, VersionDrift
from sidecar.worker.coalesce import ResultBuffer
from sidecar.worker.settings import AnalysisSettings
from sidecar.worker.state import AnalysisState
from tests.support.traffic import FEATURES, rest_record, softmax_model


def shadowed(record: CaptureRecord, outputs: np.ndarray, shadow: str = "next") -> CaptureRecord:
    """The shadow's record of a call: its answer `outputs`, the primary's answer kept beside it."""
    return record._replace(response=json.dumps({"predictions": outputs.tolist()}).encode(), shadow=shadow,
                           primary_response=record.response)


def found(results: list[Result], kind: type) -> list:  # type: ignore[type-arg]
    return [result for result in results if isinstance(result, kind)]


def test_agreement_confusion_and_the_shadows_predictions_under_its_own_name(tmp_path: Path) -> None:
    state = AnalysisState(0, replace(AnalysisSettings(reference_size=50, window_size=40)), tmp_path)
    rng = np.random.default_rng(1)
    results: list[Result] = []
    agree = total = 0
    bits: list[bool] = []
    confusion: dict[tuple[str, str], int] = {}
    for number in range(10):
        inputs = rng.normal(size=(8, FEATURES))
        primary = softmax_model(inputs)
        theirs = primary.copy()
        theirs[::3] = theirs[::3, ::-1]  # every third instance: the classes' scores reversed
        record = rest_record("iris", inputs, prediction_id=f"id-{number}")
        out, _, _ = state.process([record, shadowed(record, theirs)])
        results += out
        mine, their = np.argmax(primary, axis=1), np.argmax(theirs, axis=1)
        agree += int(np.sum(mine == their))
        bits += (mine == their).tolist()
        total += len(mine)
        for a, b in zip(mine, their, strict=True):
            confusion[(str(a), str(b))] = confusion.get((str(a), str(b)), 0) + 1
    buffer = ResultBuffer()
    buffer.extend([result for result in results if isinstance(result, ShadowBatch)])
    [merged] = buffer.take()
    assert isinstance(merged, ShadowBatch)
    assert (merged.model, merged.shadow, merged.task) == ("iris", "next", "classification")
    assert (merged.pairs, merged.agreed, merged.unmatched) == (total, agree, 0)
    assert merged.confusion == confusion
    assert merged.recent == 40 and merged.agreement == pytest.approx(np.mean(bits[-40:]))
    assert merged.drift_windows == total // 40 and merged.drift is not None
    stored = [result for result in found(results, Predictions) if result.model == "iris~next"]
    assert sum(len(result.items) for result in stored) == total
    assert {item.prediction_id for result in stored for item in result.items} == {f"id-{n}~next" for n in range(10)}


def test_regression_answers_are_compared_by_their_differences(tmp_path: Path) -> None:
    state = AnalysisState(0, AnalysisSettings(reference_size=50, window_size=1000), tmp_path)
    inputs = np.random.default_rng(2).normal(size=(20, FEATURES))
    values = inputs.sum(axis=1, keepdims=True)
    record = rest_record("price", inputs, outputs=values)
    results, _, _ = state.process([record, shadowed(record, values * 1.1 + 0.5)])
    [batch] = found(results, ShadowBatch)
    assert batch.task == "regression" and batch.pairs == 20 and batch.agreement is None
    assert batch.abs_diff.total == pytest.approx(np.sum(np.abs(values * 0.1 + 0.5)).item())
    assert sum(batch.rel_diff.counts) == 20


def test_answers_of_other_shapes_are_counted_unmatched(tmp_path: Path) -> None:
    state = AnalysisState(0, AnalysisSettings(reference_size=50, window_size=100), tmp_path)
    inputs = np.random.default_rng(3).normal(size=(4, FEATURES))
    record = rest_record("iris", inputs)
    results, errors, _ = state.process([record, shadowed(record, softmax_model(inputs)[:, :2])])
    [batch] = found(results, ShadowBatch)
    assert (batch.pairs, batch.unmatched) == (0, 4)
    broken = record._replace(response=b"not json", shadow="next", primary_response=record.response)
    _, errors, _ = state.process([broken])
    assert sum(count for (model, _, _), count in errors.items() if model == "iris~next") == 1


def test_a_canary_version_is_tested_against_the_stable_one(tmp_path: Path) -> None:
    state = AnalysisState(0, AnalysisSettings(reference_size=50, window_size=60, analysis_by_version=True), tmp_path)
    rng = np.random.default_rng(4)
    results: list[Result] = []
    for _ in range(10):
        stable = rest_record("iris", rng.normal(size=(8, FEATURES)))._replace(label="stable")
        canary = rest_record("iris", rng.normal(size=(8, FEATURES)) + 2.0)._replace(label="canary")
        out, _, _ = state.process([stable, canary])
        results += out
    verdicts = found(results, VersionDrift)
    assert verdicts, "the canary had 80 outputs, more than its window of 60"
    assert {(v.model, v.version, v.baseline) for v in verdicts} == {("iris", "iris@canary", "iris@stable")}
    assert verdicts[-1].drift and "stable" in verdicts[-1].baseline_source


def test_the_baseline_choice_is_logged_once_and_a_version_of_another_shape_is_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = AnalysisState(0, AnalysisSettings(reference_size=50, window_size=60, analysis_by_version=True), tmp_path)
    rng = np.random.default_rng(5)
    results: list[Result] = []
    with caplog.at_level(logging.INFO, logger="sidecar.worker.comparisons"):
        for _ in range(10):
            stable = rest_record("iris", rng.normal(size=(8, FEATURES)))._replace(label="stable")
            canary = rest_record("iris", rng.normal(size=(8, FEATURES)))._replace(label="canary")
            inputs = rng.normal(size=(8, FEATURES))
            narrow = rest_record("iris", inputs)._replace(
                label="narrow", response=json.dumps({"predictions": softmax_model(inputs)[:, :2].tolist()}).encode())
            out, _, _ = state.process([stable, canary, narrow])
            results += out
    said = [record.getMessage() for record in caplog.records]
    assert said.count("model iris: versions are compared with baseline iris@stable, the version labelled stable") == 1
    assert [result.model for result in found(results, ModelError)] == ["iris@narrow"]
    assert sum("iris@narrow" in line and "left out" in line for line in said) == 1
    assert {v.version for v in found(results, VersionDrift)} == {"iris@canary"}
