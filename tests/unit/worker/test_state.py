"""Per-model state, end to end in one process: real codec, real detectors, records with TF Serving REST bodies."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.messages.records import CaptureRecord
from sidecar.messages.results import (
    SCORE_BUCKETS,
    DriftWindow,
    ModelError,
    ModelStatus,
    OutlierBatch,
    Predictions,
    QualityBatch,
    Result,
    bucket_counts,
)
from sidecar.worker.settings import AnalysisSettings
from sidecar.worker.state import AnalysisState
from tests.support.traffic import FEATURES, named_record, rest_record, softmax_model, stream


def small(**overrides: Any) -> AnalysisSettings:
    """Small reference and windows, so that a few records complete them."""
    return replace(AnalysisSettings(reference_size=200, window_size=100), **overrides)


def run(state: AnalysisState, records: list[CaptureRecord]) -> list[Result]:
    results: list[Result] = []
    for start in range(0, len(records), 8):
        out, _, _ = state.process(records[start:start + 8])
        results.extend(out)
    return results


def of_type(results: list[Result], kind: type) -> list:  # type: ignore[type-arg]
    return [result for result in results if isinstance(result, kind)]


def windows(results: list[Result], detector: str) -> list[DriftWindow]:
    return [r for r in of_type(results, DriftWindow) if r.detector == detector]


def latest_status(results: list[Result]) -> ModelStatus:
    return of_type(results, ModelStatus)[-1]  # type: ignore[no-any-return]


def test_the_reference_is_the_first_instances_and_is_saved(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    early = run(state, list(stream("iris", 10, 10, seed=1)))
    status = latest_status(early)
    assert (status.reference.instances, status.reference.target, status.reference.complete) == (100, 200, False)
    assert status.reference.source == "traffic"
    assert status.task == "classification"
    assert status.inputs == [f"input[{i}]" for i in range(FEATURES)]
    assert windows(early, "feature_drift") == []
    done = run(state, list(stream("iris", 12, 10, seed=2)))
    status = latest_status(done)
    assert status.reference.complete and status.reference.instances == 200
    assert status.reference.saved == str(tmp_path / "models" / "iris" / "reference.npz")
    assert (tmp_path / "models" / "iris" / "reference.json").exists()
    assert status.outputs == ["predicted_class", "output[0]", "output[1]", "output[2]"]


def test_a_stable_stream_does_not_drift_and_a_shifted_one_does(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    run(state, list(stream("iris", 20, 10, seed=1)))
    stable = windows(run(state, list(stream("iris", 30, 10, seed=2))), "feature_drift")
    assert len(stable) == 3
    assert not any(window.drift for window in stable)
    shifted = run(state, list(stream("iris", 10, 10, seed=3, shift=2.0, feature=1)))
    [window] = windows(shifted, "feature_drift")
    assert window.drift
    worst = min(window.features.all(), key=lambda item: item.adjusted_p_value)
    assert window.features.worst[0] == worst  # the worker ranks them: the metrics read the worst as they are
    assert worst.name == "input[1]"
    assert worst.drift and worst.effect_size > 1.0
    assert worst.reference["mean"] == pytest.approx(0.0, abs=0.3)
    assert worst.current["mean"] == pytest.approx(2.0, abs=0.3)
    [output] = windows(shifted, "output_drift")
    assert output.drift  # the shifted feature changes which class the model predicts
    predicted = next(item for item in output.features.all() if item.name == "predicted_class")
    assert predicted.kind == "categorical"


def test_every_instance_yields_a_prediction_for_the_feedback_store(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    inputs = np.random.default_rng(0).normal(size=(3, FEATURES))
    [predictions] = of_type(run(state, [rest_record("iris", inputs, prediction_id="abc")]), Predictions)
    assert predictions.model == "iris" and predictions.task == "multiclass"
    assert [(item.prediction_id, item.instance_index) for item in predictions.items] == [("abc", 0), ("abc", 1),
                                                                                        ("abc", 2)]
    np.testing.assert_allclose(predictions.items[1].predicted, softmax_model(inputs)[1])
    json.dumps([item.predicted for item in predictions.items])


def test_a_regressor_is_recognised_from_its_values_or_forced_by_settings(tmp_path: Path) -> None:
    state = AnalysisState(0, small(models={"forced": {"task": "classification"}}), tmp_path)
    inputs = np.ones((2, FEATURES))
    [regression] = of_type(run(state, [rest_record("price", inputs, np.array([[3.5], [7.0]]))]), Predictions)
    assert regression.task == "regression"
    assert [item.predicted for item in regression.items] == [3.5, 7.0]
    forced = latest_status(run(state, [rest_record("forced", inputs, np.array([[3.5], [7.0]]))]))
    assert forced.task == "classification"


def test_a_restarted_state_reuses_the_saved_reference(tmp_path: Path) -> None:
    settings = small()
    run(AnalysisState(0, settings, tmp_path), list(stream("iris", 20, 10, seed=1)))
    restarted = AnalysisState(0, settings, tmp_path)
    results = run(restarted, list(stream("iris", 10, 10, seed=2)))
    status = latest_status(results)
    assert status.reference.complete and status.reference.restored
    assert len(windows(results, "feature_drift")) == 1


def test_a_reference_file_makes_the_reference_complete_at_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(300, FEATURES))
    path = tmp_path / "iris.npz"
    np.savez(path, input=reference, **{"output:output": softmax_model(reference)})  # type: ignore[arg-type]
    settings = small(models={"iris": {"reference": str(path)}})
    results = run(AnalysisState(0, settings, tmp_path / "state"), list(stream("iris", 10, 10, seed=2)))
    status = latest_status(results)
    assert (status.reference.source, status.reference.file, status.reference.instances) == ("file", str(path), 300)
    assert status.reference.complete
    [window] = windows(results, "feature_drift")
    assert not window.drift
    assert len(windows(results, "output_drift")) == 1


def test_a_bad_reference_file_is_reported_and_traffic_is_used(tmp_path: Path) -> None:
    path = tmp_path / "wrong.npy"
    np.save(path, np.zeros((10, 2)))
    settings = small(models={"iris": {"reference": str(path)}})
    status = latest_status(run(AnalysisState(0, settings, tmp_path), list(stream("iris", 3, 10, seed=2))))
    assert status.reference.error is not None and "4 columns" in status.reference.error
    assert status.reference.instances == 30 and not status.reference.complete


def test_data_quality_counts_nan_out_of_range_and_schema_changes(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    run(state, list(stream("iris", 20, 10, seed=1)))
    odd = np.zeros((4, FEATURES))
    odd[0, 0] = np.nan
    odd[1, 2] = 1e6
    odd[2, 3] = -1e6
    record = rest_record("iris", odd, outputs=np.full((4, 3), 1 / 3))
    shape = rest_record("iris", np.zeros((2, FEATURES + 1)), outputs=np.full((2, 3), 1 / 3))
    counts: dict[tuple[str, str], int] = {}
    for batch in of_type(run(state, [record, shape]), QualityBatch):
        for key, count in batch.counts.items():
            counts[key] = counts.get(key, 0) + count
    assert counts == {("input[0]", "nan"): 1, ("input[2]", "above_range"): 1, ("input[3]", "below_range"): 1,
                      ("input", "shape"): 2}


def test_a_batch_that_completes_the_reference_checks_its_later_instances_against_its_range(
        tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    reference = list(stream("iris", small().reference_size // 10, 10, seed=1))
    far = np.full((3, FEATURES), 1e6)
    batch = [*reference, rest_record("iris", far, outputs=np.full((3, 3), 1 / 3))]  # one batch, as the pool sends
    counts: dict[tuple[str, str], int] = {}
    for quality in of_type(run(state, batch), QualityBatch):
        for key, count in quality.counts.items():
            counts[key] = counts.get(key, 0) + count
    assert counts == {(f"input[{column}]", "above_range"): 3 for column in range(FEATURES)}


def test_outliers_are_counted_per_batch_after_the_reference(tmp_path: Path) -> None:
    state = AnalysisState(0, small(outlier_fpr=0.01), tmp_path)
    run(state, list(stream("iris", 20, 10, seed=1)))
    far = np.full((5, FEATURES), 8.0)
    [batch] = of_type(run(state, [rest_record("iris", far)]), OutlierBatch)
    assert batch.detector == "mahalanobis"
    assert (batch.instances, batch.outliers) == (5, 5)
    assert sum(batch.scores.counts) == 5  # every score counted, all above the threshold:
    assert sum(number for bound, number in zip(SCORE_BUCKETS, batch.scores.counts, strict=False)
               if bound <= batch.threshold) == 0
    assert batch.max_score is not None and batch.max_score > batch.threshold


def test_time_windows_are_evaluated_when_their_bucket_ends(tmp_path: Path) -> None:
    settings = AnalysisSettings(reference_size=50, window_mode="time", window_seconds=10.0, window_min_instances=20)
    state = AnalysisState(0, settings, tmp_path)
    rng = np.random.default_rng(1)
    records = [rest_record("iris", rng.normal(size=(10, FEATURES)), captured=1000.0 + n) for n in range(9)]
    assert windows(run(state, records), "feature_drift") == []
    assert windows(state.tick(1005.0), "feature_drift") == []
    [window] = windows(state.tick(1012.0), "feature_drift")
    assert window.window["instances"] == 40


def test_undecodable_and_failed_records_are_counted_or_skipped(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    good = rest_record("iris", np.ones((2, FEATURES)))
    broken = good._replace(request=b"{not json")
    failed = rest_record("iris", np.ones((2, FEATURES)), status=500)
    grpc = good._replace(protocol="grpc", status=0, request=b"\xff\xff\xff")
    results, errors, analysed = state.process([good, broken, failed, grpc])
    assert errors == {("iris", "rest", "json"): 1, ("iris", "grpc", "protobuf"): 1}
    assert analysed == {"iris": 2}
    assert len(of_type(results, Predictions)[0].items) == 2


def test_rest_and_grpc_calls_of_one_model_share_features_named_as_grpc_names_them(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    unnamed = rest_record("iris", np.zeros((2, FEATURES)))
    inputs = np.ones((2, FEATURES))
    body = json.dumps({"inputs": {"features": inputs.tolist()}}).encode()
    answer = json.dumps({"outputs": {"probabilities": softmax_model(inputs).tolist()}}).encode()
    named = unnamed._replace(request=body, response=answer)
    results, _, analysed = state.process([unnamed, named])
    status = latest_status(results)
    assert status.inputs == [f"features[{i}]" for i in range(FEATURES)]
    assert analysed == {"iris": 4}
    assert state.models["iris"].output is not None and state.models["iris"].output.name == "probabilities"
    assert not [r for r in results if isinstance(r, QualityBatch) and r.counts]


def test_an_autoencoder_configured_for_a_model_scores_its_instances(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")

    module = tf.Module()  # reconstructs every row as zeros: the score is the mean squared value of the row
    module.reconstruct = tf.function(lambda x: {"reconstruction": tf.zeros_like(x)},
                                     input_signature=[tf.TensorSpec([None, FEATURES], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "ae"), signatures={"serving_default": module.reconstruct})
    settings = small(models={"iris": {"autoencoder": str(tmp_path / "ae")}, "broken": {"autoencoder": "absent"}})
    state = AnalysisState(0, settings, tmp_path / "state")
    run(state, list(stream("iris", 20, 10, seed=1)))
    [batch] = [b for b in of_type(run(state, [rest_record("iris", np.full((3, FEATURES), 6.0))]), OutlierBatch)
               if b.detector == "autoencoder"]
    assert (batch.instances, batch.outliers) == (3, 3)
    assert batch.scores.counts == bucket_counts([36.0] * 3, SCORE_BUCKETS).counts
    assert batch.scores.total == pytest.approx(108.0) and batch.max_score == pytest.approx(36.0)
    broken = run(state, list(stream("broken", 21, 10, seed=1)))
    assert any(isinstance(r, ModelError) and r.error.startswith("autoencoder: ValueError") for r in broken)
    assert {b.detector for b in of_type(broken, OutlierBatch)} == {"mahalanobis"}


def digits_record(model: str, pixels: np.ndarray, prediction_id: str) -> CaptureRecord:
    """scikit-learn's digits as a client sends them: 64 pixels of 0..16 as JSON floats."""
    probabilities = np.full((pixels.shape[0], 10), 0.1)
    return rest_record(model, pixels.astype(np.float64), probabilities, prediction_id=prediction_id)


def test_integer_valued_float_pixels_are_numeric_so_gross_outliers_are_caught(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits().data
    state = AnalysisState(0, small(reference_size=600), tmp_path)
    run(state, [digits_record("digits", digits[i:i + 20], f"d{i}") for i in range(0, 600, 20)])
    status = latest_status(run(state, [digits_record("digits", digits[600:620], "held-out")]))
    assert status.decisions is not None
    assert status.decisions["detectors"]["mahalanobis"]["active"]
    assert {(entry["kind"], entry["source"]) for entry in status.decisions["columns"]} == {("numeric", "data")}
    clean = of_type(run(state, [digits_record("digits", digits[700:1000], "clean")]), OutlierBatch)
    noise = np.random.default_rng(0).uniform(0, 16, size=(30, 64)).round()
    flagged = of_type(run(state, [digits_record("digits", noise, "noise")]), OutlierBatch)
    assert sum(batch.outliers for batch in flagged) >= 29
    assert sum(batch.outliers for batch in clean) <= 0.05 * 300


@pytest.mark.parametrize("nested", [False, True])
def test_class_id_outputs_are_classes_not_probabilities(tmp_path: Path, nested: bool) -> None:
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(40, FEATURES))
    ids = softmax_model(inputs).argmax(axis=1)
    outputs = ids[:, None] if nested else ids
    state = AnalysisState(0, small(), tmp_path)
    results = run(state, [rest_record("labels", inputs, outputs, prediction_id="p")])
    [predicted] = of_type(results, Predictions)
    assert predicted.task == "multiclass"
    assert [item.predicted for item in predicted.items] == ids.tolist()
    assert latest_status(results).task == "classification"


def test_configured_multiclass_with_float_class_ids_scores_classes(tmp_path: Path) -> None:
    settings = small(models={"labels": {"task": "multiclass"}})
    state = AnalysisState(0, settings, tmp_path)
    ids = np.array([[2.0], [0.0], [1.0], [2.0]])
    [predicted] = of_type(run(state, [rest_record("labels", np.zeros((4, FEATURES)), ids)]), Predictions)
    assert predicted.task == "multiclass"
    assert [item.predicted for item in predicted.items] == [2, 0, 1, 2]


def test_one_request_with_nan_does_not_make_a_classifier_a_regressor(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    records = list(stream("iris", 20, 10, seed=1))
    broken = rest_record("iris", np.full((1, FEATURES), np.nan), np.full((1, 3), np.nan), prediction_id="nan")
    results = run(state, [*records[:3], broken, *records[3:]])
    status = latest_status(results)
    assert status.reference.complete
    assert status.task == "classification"
    assert {predicted.task for predicted in of_type(results, Predictions)} == {"multiclass"}
    assert status.decisions is not None
    assert status.decisions["reference_rows_excluded"]["non_finite"] == 1


def test_one_extreme_value_in_the_reference_does_not_blind_the_outlier_detector(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(200, FEATURES))
    reference[3, 0] = 1e6
    state = AnalysisState(0, small(), tmp_path)
    results = run(state, [rest_record("iris", reference[i:i + 10], prediction_id=f"r{i}") for i in range(0, 200, 10)])
    decisions = latest_status(results).decisions
    assert decisions is not None and decisions["reference_rows_excluded"]["extreme"] == 1
    outliers = rng.normal(size=(20, FEATURES)) + 8.0
    [batch] = [b for b in of_type(run(state, [rest_record("iris", outliers)]), OutlierBatch)
               if b.detector == "mahalanobis"]
    assert batch.outliers == 20
    restarted = AnalysisState(0, small(), tmp_path)  # the saved reference is fitted the same way
    [again] = [b for b in of_type(run(restarted, [rest_record("iris", outliers)]), OutlierBatch)
               if b.detector == "mahalanobis"]
    assert again.outliers == 20


def test_the_decisions_name_each_detector_built_or_not_and_why(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    decisions = latest_status(run(state, list(stream("iris", 20, 10, seed=1)))).decisions
    assert decisions is not None
    assert decisions["task"] == {"value": "classification", "source": "data", "class_ids": False}
    assert decisions["signature"] == {"source": None, "error": "not asked (no upstream)"}
    assert decisions["layout"]["mode"] == "per_feature"
    assert decisions["inputs"]["input"]["columns"] == FEATURES
    active = {name: entry["active"] for name, entry in decisions["detectors"].items()}
    assert active == {"feature_drift": True, "output_drift": True, "mahalanobis": True, "mmd": False,
                      "autoencoder": False}
    assert "mmd_enabled" in decisions["detectors"]["mmd"]["reason"]


def test_wide_inputs_are_analysed_whole_through_a_projection(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    width = 600
    basis = rng.normal(size=(8, width))

    def rows(count: int, shift: float = 0.0) -> np.ndarray:
        block = rng.normal(size=(count, 8)) @ basis + 0.1 * rng.normal(size=(count, width))
        block[:, width // 2:] += shift  # a change confined to the last half of the columns
        return block

    state = AnalysisState(0, small(reference_size=300, window_size=300), tmp_path)
    reference = rows(300)
    status = latest_status(run(state, [rest_record("wide", reference[i:i + 30], np.full((30, 3), 1 / 3))
                                       for i in range(0, 300, 30)]))
    assert status.input_columns == width
    assert status.decisions is not None and status.decisions["layout"]["mode"] == "projected"
    clean = windows(run(state, [rest_record("wide", rows(300), np.full((300, 3), 1 / 3))]), "feature_drift")
    shifted = windows(run(state, [rest_record("wide", rows(300, 0.3), np.full((300, 3), 1 / 3))]),
                      "feature_drift")
    assert [w.drift for w in clean] == [False]
    assert [w.drift for w in shifted] == [True]


def test_a_reset_reference_is_collected_again(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    run(state, list(stream("iris", 20, 10, seed=1)))
    assert (tmp_path / "models" / "iris" / "reference.json").exists()
    [status] = state.reset_reference("iris")
    assert not status.reference.complete and status.reference.instances == 0
    assert not (tmp_path / "models" / "iris" / "reference.json").exists()
    assert latest_status(run(state, list(stream("iris", 20, 10, seed=4)))).reference.complete


def test_a_truncated_streamed_answer_is_counted_not_decoded_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = AnalysisState(0, small(), tmp_path)
    cut = rest_record("iris", np.zeros((2, FEATURES)))._replace(response_truncated=True)
    with caplog.at_level(logging.INFO, logger="sidecar.worker.state"):
        results, errors, analysed = state.process([cut, cut])
    assert errors == {("iris", "rest", "truncated"): 2}
    assert analysed == {} and results == []
    assert [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()] == [
        'model iris: streamed answers cut at the capture bound (or ended early) are not analysed; counted as '
        'sidecar_decode_errors_total{reason="truncated"}']


def test_versions_analysed_apart_each_get_their_own_reference_and_drift(tmp_path: Path) -> None:
    state = AnalysisState(0, small(models={"iris": {"by_version": True}}), tmp_path)
    stable = [record._replace(version="1") for record in stream("iris", 40, 10, seed=1)]
    canary = [record._replace(label="canary") for record in stream("iris", 20, 10, seed=2)]
    canary += [record._replace(label="canary") for record in stream("iris", 20, 10, seed=3, shift=2.0)]
    unnamed = list(stream("iris", 5, 10, seed=4))
    results = run(state, [item for pair in zip(stable, canary, strict=True) for item in pair] + unnamed)
    assert sorted(state.models) == ["iris", "iris@1", "iris@canary"]
    by_model = {status.model: status for status in of_type(results, ModelStatus)}
    assert by_model["iris@1"].reference.complete and by_model["iris@canary"].reference.complete
    assert by_model["iris"].reference.instances == 50  # requests naming no version stay under the model's name
    drifted = {window.model: window.drift for window in windows(results, "feature_drift")}
    assert drifted == {"iris@1": False, "iris@canary": True}
    assert by_model["iris@1"].reference.saved != by_model["iris@canary"].reference.saved
    predictions = of_type(results, Predictions)
    assert {p.model for p in predictions} == {"iris@1", "iris@canary", "iris"}


def test_versions_share_one_analysis_unless_configured(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    run(state, [record._replace(version=str(n % 2 + 1)) for n, record in enumerate(stream("iris", 4, 10, seed=1))])
    assert list(state.models) == ["iris"]


def test_each_predicted_instance_carries_its_outlier_scores_flags_and_quality_issues(tmp_path: Path) -> None:
    state = AnalysisState(0, small(outlier_fpr=0.01), tmp_path)
    run(state, list(stream("iris", 20, 10, seed=1)))
    rows = np.zeros((4, FEATURES))
    rows[1] = 8.0  # far outside the reference
    rows[2, 0] = np.nan  # not scored: Mahalanobis needs complete rows
    rows[3, 3] = -9.0
    record = rest_record("iris", rows, prediction_id="probe")._replace(version="7")
    wider = rest_record("iris", np.zeros((2, FEATURES + 1)), softmax_model(np.zeros((2, FEATURES))), "wider")
    results, _, _ = state.process([record, wider])
    [predictions] = of_type(results, Predictions)
    [batch] = of_type(results, OutlierBatch)
    details = predictions.details
    assert details is not None
    assert [(item.prediction_id, item.instance_index) for item in predictions.items] == [
        ("probe", 0), ("probe", 1), ("probe", 2), ("probe", 3), ("wider", 0), ("wider", 1)]
    assert details.versions == ["7"] * 4 + [""] * 2
    assert details.outliers == ["m", "M", "", "M", "", ""]  # the wider request's inputs do not fit the schema
    assert details.issues == ["", "a", "n", "b", "s", "s"]
    scores = details.scores["mahalanobis"]
    assert scores[0] < batch.threshold < min(scores[1], scores[3])
    assert [np.isnan(score) for score in scores] == [False, False, True, False, True, True]
    assert sum(code.count("M") for code in details.outliers if code) == batch.outliers == 2


def test_rows_taken_into_the_reference_are_not_scored(tmp_path: Path) -> None:
    state = AnalysisState(0, small(), tmp_path)
    run(state, list(stream("iris", 19, 10, seed=1)))  # 190 of the 200 reference rows
    results, _, _ = state.process([rest_record("iris", np.zeros((20, FEATURES)), prediction_id="last")])
    [predictions] = of_type(results, Predictions)
    assert predictions.details is not None
    assert predictions.details.outliers == [""] * 10 + ["m"] * 10
    assert predictions.details.issues == [""] * 20


WORKCLASSES = ["gov", "private", "self", "never"]


def census_rows(rng: np.random.Generator, count: int, workclass: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a scikit-learn pipeline's three inputs: a text of few levels, a text of 200 and a number."""
    classes = workclass or WORKCLASSES
    return [{"workclass": classes[int(rng.integers(0, len(classes)))], "city": f"c{int(rng.integers(0, 200))}",
             "age": float(rng.normal(40.0, 10.0))} for _ in range(count)]


def feed_rows(state: AnalysisState, rows: list[dict[str, Any]], per_record: int = 10) -> list[Result]:
    return run(state, [named_record("census", rows[start:start + per_record], prediction_id=f"p{start}")
                       for start in range(0, len(rows), per_record)])


def shares(values: list[str]) -> dict[str, float]:
    names, counts = np.unique(np.array(values), return_counts=True)
    return {str(name): count / len(values) for name, count in zip(names, counts, strict=True)}


def test_drift_windows_name_the_categories_of_a_text_by_their_strings_also_after_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    reference = census_rows(rng, 200)
    state = AnalysisState(0, small(), tmp_path)
    feed_rows(state, reference)
    moved = census_rows(rng, 100, ["gov", "gov", "gov", "contract"])
    [window] = windows(feed_rows(state, moved), "feature_drift")
    features = {feature.name: feature for feature in window.features.all()}
    assert "city" not in features and "city#length" in features  # 200 levels: the summary is analysed
    workclass = features["workclass"]
    assert workclass.kind == "categorical" and workclass.drift
    expected = shares([row["workclass"] for row in reference])
    assert workclass.reference == pytest.approx({"count": 200.0, **expected})
    current = shares([row["workclass"] for row in moved])
    assert workclass.current == pytest.approx({"count": 100.0, "gov": current["gov"],
                                               "__other__": current["contract"]})  # unknown to the reference
    restarted = AnalysisState(0, small(), tmp_path)  # the saved reference and its vocabularies
    [again] = windows(feed_rows(restarted, moved), "feature_drift")
    assert next(f for f in again.features.all() if f.name == "workclass").reference == workclass.reference


def test_the_code_strings_share_beyond_the_vocabulary_is_named_other_in_drift_windows(tmp_path: Path) -> None:
    settings = replace(AnalysisSettings(reference_size=1100, window_size=100), categorical_max_values=2000)
    state = AnalysisState(0, settings, tmp_path)
    reference = [{"id": f"v{n}"} for n in range(1100)]  # the last 100 find the vocabulary (1000 strings) full
    feed_rows(state, reference, per_record=100)
    [window] = windows(feed_rows(state, [{"id": f"v{n}"} for n in range(100)]), "feature_drift")
    [feature] = [f for f in window.features.all() if f.name == "id"]
    assert feature.kind == "categorical"
    assert feature.reference["__other__"] == pytest.approx(100 / 1100)  # the shared code, the most frequent
    assert not any(key.isdigit() for key in [*feature.reference, *feature.current])
    assert set(feature.current) <= {"count", *(f"v{n}" for n in range(100))}
