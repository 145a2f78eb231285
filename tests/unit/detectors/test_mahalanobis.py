"""Mahalanobis outliers: Ledoit-Wolf shrinkage as scikit-learn, a threshold whose FPR holds on fresh data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf

from sidecar.detectors.mahalanobis import MahalanobisOutlier, conformal_threshold, ledoit_wolf_shrinkage


def correlated(rng: np.random.Generator, rows: int, mixing: np.ndarray) -> np.ndarray:
    return np.asarray(rng.normal(size=(rows, mixing.shape[0])) @ mixing + 3.0)


@pytest.mark.parametrize("d", [1, 2, 10, 40])
def test_ledoit_wolf_shrinkage_equals_scikit_learns(d: int) -> None:
    rng = np.random.default_rng(d)
    x = correlated(rng, 120, rng.normal(size=(d, d)))
    assert ledoit_wolf_shrinkage(x) == pytest.approx(ledoit_wolf(x)[1], rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("d", [3, 20])
def test_false_positive_rate_on_fresh_reference_like_data_is_close_to_target(d: int) -> None:
    rates = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        mixing = rng.normal(size=(d, d))
        detector = MahalanobisOutlier(correlated(rng, 1500, mixing), fpr=0.02)
        rates.append(detector.predict(correlated(rng, 20000, mixing)).mean())
    assert 0.012 < np.mean(rates) < 0.028


def test_scores_are_mahalanobis_distances_under_the_shrunk_standardised_covariance() -> None:
    rng = np.random.default_rng(1)
    reference = correlated(rng, 500, rng.normal(size=(4, 4)))
    detector = MahalanobisOutlier(reference, shrinkage=0.25)
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    z = (reference - mean) / std
    covariance = z.T @ z / len(z)
    shrunk = 0.75 * covariance + 0.25 * np.trace(covariance) / 4 * np.eye(4)
    x = correlated(rng, 10, rng.normal(size=(4, 4)))
    zx = (x - mean) / std
    expected = np.sqrt(np.einsum("ij,jk,ik->i", zx, np.linalg.inv(shrunk), zx))
    np.testing.assert_allclose(detector.score(x), expected, rtol=1e-10)


def test_far_points_are_outliers_and_central_points_are_not() -> None:
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(5, 5))
    detector = MahalanobisOutlier(correlated(rng, 1000, mixing))
    central = np.full((1, 5), 3.0)
    far = central + 10 * np.abs(mixing).sum(axis=0)
    assert detector.predict(np.vstack([central, far])).tolist() == [False, True]


def test_constant_and_collinear_features_still_give_finite_scores() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 2))
    reference = np.column_stack([base, base[:, 0] * 2, np.full(300, 7.0)])
    detector = MahalanobisOutlier(reference)
    scores = detector.score(np.column_stack([rng.normal(size=(20, 2)), rng.normal(size=20), np.full(20, 7.0)]))
    assert np.isfinite(scores).all() and np.isfinite(detector.threshold)
    moved = detector.score(np.array([[0.0, 0.0, 0.0, 8.0]]))
    assert moved[0] > detector.threshold  # a change in a constant feature stands out


def test_rows_with_non_finite_values_score_nan_and_are_not_flagged() -> None:
    rng = np.random.default_rng(4)
    reference = np.vstack([rng.normal(size=(100, 3)), [[np.nan, 0.0, 0.0]]])
    detector = MahalanobisOutlier(reference)
    scores = detector.score(np.array([[np.nan, 0.0, 0.0], [0.0, np.inf, 0.0], [0.0, 0.0, 0.0]]))
    assert np.isnan(scores[:2]).all() and np.isfinite(scores[2])
    assert not detector.predict(np.array([[np.nan, 1e9, 0.0]]))[0]


def test_conformal_threshold_is_the_ceil_n_plus_one_rank() -> None:
    scores = np.arange(1.0, 100.0)  # 99 scores
    assert conformal_threshold(scores, 0.1) == 90.0  # ceil(100 * 0.9) = 90th smallest
    assert conformal_threshold(scores, 0.001) == 99.0  # rank beyond n: the largest


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="3 finite"):
        MahalanobisOutlier(np.ones((2, 2)))
    with pytest.raises(ValueError, match="fpr"):
        MahalanobisOutlier(np.random.default_rng(0).normal(size=(20, 2)), fpr=0.0)
    with pytest.raises(ValueError, match="shrinkage"):
        MahalanobisOutlier(np.random.default_rng(0).normal(size=(20, 2)), shrinkage="oas")
    with pytest.raises(ValueError, match="features"):
        MahalanobisOutlier(np.random.default_rng(0).normal(size=(20, 2))).score(np.zeros((1, 3)))
