"""CBPE on synthetic streams whose calibration is known: the estimate against what the labels realize."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from sidecar.detectors.performance_estimation import expected_quality, fit_isotonic

N = 20_000


def _logistic_stream(rng: np.random.Generator, shift: float, overconfident: float = 1.0) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """A binary model P(y=1|x) = sigmoid(2x); x ~ N(shift, 1). The model reports sigmoid(2x * overconfident), so
    `overconfident` 1 is calibrated and larger values are too sure. Returns (reported probabilities, labels)."""
    x = rng.normal(shift, 1.0, N)
    truth = rng.random(N) < 1.0 / (1.0 + np.exp(-2.0 * x))
    reported = 1.0 / (1.0 + np.exp(-2.0 * x * overconfident))
    return reported, truth.astype(int)


def _realized(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    predicted = (probabilities >= 0.5).astype(int) if probabilities.ndim == 1 else probabilities.argmax(axis=1)
    return {"accuracy": accuracy_score(truth, predicted),
            "precision": precision_score(truth, predicted, average="macro", zero_division=0),
            "recall": recall_score(truth, predicted, average="macro", zero_division=0),
            "f1": f1_score(truth, predicted, average="macro", zero_division=0)}


@pytest.mark.parametrize("shift", [0.0, 1.5], ids=["stable", "covariate_shift"])
def test_calibrated_probabilities_estimate_the_realized_quality_within_two_points(shift: float) -> None:
    rng = np.random.default_rng(7)
    probabilities, truth = _logistic_stream(rng, shift)
    estimate = expected_quality(probabilities)
    realized = _realized(probabilities, truth)
    assert estimate.instances == N
    for name, value in realized.items():
        assert abs(getattr(estimate, name) - value) < 0.02, (name, getattr(estimate, name), value)


def test_overconfident_probabilities_need_calibration_which_labels_from_before_the_shift_provide() -> None:
    rng = np.random.default_rng(11)
    labelled_probabilities, labelled_truth = _logistic_stream(rng, 0.0, overconfident=3.0)
    predicted = (labelled_probabilities >= 0.5).astype(int)
    confidence = np.maximum(labelled_probabilities, 1 - labelled_probabilities)
    calibration = fit_isotonic(confidence[:2000], (predicted == labelled_truth)[:2000])
    for shift in (0.0, 1.5):
        probabilities, truth = _logistic_stream(rng, shift, overconfident=3.0)
        realized = _realized(probabilities, truth)["accuracy"]
        assumed = expected_quality(probabilities).accuracy
        calibrated = expected_quality(probabilities, calibration).accuracy
        assert assumed - realized > 0.05  # the uncalibrated estimate is visibly too optimistic
        assert abs(calibrated - realized) < 0.02, (shift, calibrated, realized)


def test_the_estimate_moves_with_the_inputs_before_any_label() -> None:
    rng = np.random.default_rng(3)
    stable, _ = _logistic_stream(rng, 0.0)
    shifted = 1.0 / (1.0 + np.exp(-2.0 * rng.normal(0.0, 0.2, N)))  # inputs crowd the decision boundary
    assert expected_quality(stable).accuracy - expected_quality(shifted).accuracy > 0.15


def test_multiclass_estimate_follows_sampled_labels() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 2.0, (N, 3)) + np.array([0.5, 0.0, -0.5])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    truth = np.array([rng.choice(3, p=row) for row in probabilities])
    estimate = expected_quality(probabilities)
    realized = _realized(probabilities, truth)
    for name, value in realized.items():
        assert abs(getattr(estimate, name) - value) < 0.02, (name, getattr(estimate, name), value)
    assert set(estimate.classes) == {0, 1, 2}


def test_isotonic_fit_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(500)
    outcomes = (rng.random(500) < scores ** 2).astype(float)
    ours = fit_isotonic(scores, outcomes)
    theirs = IsotonicRegression(out_of_bounds="clip").fit(scores, outcomes)
    grid = np.linspace(0.0, 1.0, 201)
    np.testing.assert_allclose(ours.apply(grid), theirs.predict(grid), atol=1e-9)
    assert ours.pairs == 500
