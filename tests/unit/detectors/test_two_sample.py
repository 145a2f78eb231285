"""Feature-wise tests equal SciPy's per-column results, vectorised over features, with NaN dropped per feature."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from sidecar.detectors import two_sample as drift

RTOL = 1e-9
ATOL = 1e-300  # p-values below the normal range may differ in their last subnormal bits


def samples(n: int, m: int, d: int, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "ties":  # few distinct values: many ties within and across samples
        return rng.integers(0, 6, (n, d)).astype(float), rng.integers(0, 7, (m, d)).astype(float)
    shift = rng.uniform(-0.4, 0.4, d)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) * rng.uniform(0.7, 1.5, d) + shift


SHAPES = [  # (n, m, d, kind): exact equal sizes, exact unequal sizes, tiny samples, asymptotic (> 10000)
    (1, 1, 1, "continuous"), (1, 5, 2, "continuous"), (3, 2, 3, "ties"), (7, 7, 4, "continuous"),
    (10, 15, 3, "ties"), (20, 20, 5, "ties"), (50, 31, 6, "continuous"), (300, 300, 8, "continuous"),
    (1000, 1000, 16, "continuous"), (1000, 1000, 16, "ties"), (1000, 640, 4, "continuous"),
    (999, 1000, 3, "ties"), (5000, 5000, 2, "continuous"), (12000, 11000, 2, "continuous"),
    (12000, 11000, 2, "ties"), (10001, 50, 2, "continuous"),
]


@pytest.mark.parametrize(("n", "m", "d", "kind"), SHAPES)
def test_ks_matches_scipy_per_column(n: int, m: int, d: int, kind: str) -> None:
    ref, cur = samples(n, m, d, kind, seed=n * 31 + m * 7 + d)
    statistic, p_value = drift.ks_2samp(ref, cur)
    for j in range(d):
        expected = stats.ks_2samp(ref[:, j], cur[:, j])
        assert statistic[j] == pytest.approx(expected.statistic, rel=RTOL, abs=1e-15)
        assert p_value[j] == pytest.approx(expected.pvalue, rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("method", ["exact", "asymp"])
@pytest.mark.parametrize(("n", "m"), [(40, 40), (40, 27), (800, 1000)])
def test_ks_honours_an_explicit_method_like_scipy(method: str, n: int, m: int) -> None:
    ref, cur = samples(n, m, 5, "continuous", seed=n + m)
    statistic, p_value = drift.ks_2samp(ref, cur, method=method)
    for j in range(5):
        expected = stats.ks_2samp(ref[:, j], cur[:, j], method=method)
        assert statistic[j] == pytest.approx(expected.statistic, rel=RTOL)
        assert p_value[j] == pytest.approx(expected.pvalue, rel=RTOL, abs=ATOL)


def test_ks_exact_equal_sizes_match_scipy_for_every_statistic_value() -> None:
    n = 400
    ref = np.tile(np.arange(n, dtype=float)[:, None], (1, n + 1))
    cur = ref + np.arange(n + 1)  # feature k is shifted by k: D = k / n, all values 0..1
    statistic, p_value = drift.ks_2samp(ref, cur)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # SciPy notes its own fallback to asymp at D = 1/n
        expected = [stats.ks_2samp(ref[:, k], cur[:, k]) for k in range(n + 1)]
    np.testing.assert_allclose(statistic, [e.statistic for e in expected], rtol=RTOL)
    np.testing.assert_allclose(p_value, [e.pvalue for e in expected], rtol=RTOL, atol=ATOL)


def test_ks_unequal_size_fallback_kernel_equals_scipys_compiled_one() -> None:
    from scipy.stats._stats_pythran import _compute_outer_prob_inside_method

    for m, n in [(30, 17), (40, 24), (13, 50)]:
        g = math.gcd(m, n)
        for h in range(1, (m // g) * n + 1, 7):
            assert drift.outer_prob_inside(m, n, g, h) == pytest.approx(
                _compute_outer_prob_inside_method(m, n, g, h), rel=1e-12, abs=1e-300)


def test_nan_values_are_dropped_per_feature_before_testing() -> None:
    ref, cur = samples(200, 150, 3, "continuous", seed=5)
    ref[::7, 0] = np.nan
    cur[::5, 1] = np.nan
    cur[:, 2] = np.nan
    statistic, p_value = drift.ks_2samp(ref, cur)
    for j in (0, 1):
        expected = stats.ks_2samp(ref[:, j], cur[:, j], nan_policy="omit")
        assert statistic[j] == pytest.approx(expected.statistic, rel=RTOL)
        assert p_value[j] == pytest.approx(expected.pvalue, rel=RTOL)
    assert np.isnan(statistic[2]) and np.isnan(p_value[2])


def test_identical_and_constant_samples_show_no_difference() -> None:
    ref = np.column_stack([np.full(100, 3.0), np.arange(100.0)])
    statistic, p_value = drift.ks_2samp(ref, ref.copy())
    np.testing.assert_array_equal(statistic, [0.0, 0.0])
    np.testing.assert_array_equal(p_value, [1.0, 1.0])
    assert drift.wasserstein_normalised(ref, ref.copy()).tolist() == [0.0, 0.0]


def test_constant_columns_that_differ_are_a_maximal_difference() -> None:
    statistic, p_value = drift.ks_2samp(np.full((30, 1), 1.0), np.full((30, 1), 2.0))
    expected = stats.ks_2samp(np.full(30, 1.0), np.full(30, 2.0))
    assert statistic[0] == 1.0
    assert p_value[0] == pytest.approx(expected.pvalue, rel=RTOL)


def test_a_one_dimensional_sample_is_one_feature() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=60), rng.normal(size=45)
    statistic, p_value = drift.ks_2samp(a, b)
    assert statistic.shape == (1,)
    assert p_value[0] == pytest.approx(stats.ks_2samp(a, b).pvalue, rel=RTOL)


def test_unknown_methods_and_mismatched_features_are_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        drift.ks_2samp(np.zeros((3, 1)), np.zeros((3, 1)), method="fast")
    with pytest.raises(ValueError, match="features"):
        drift.ks_2samp(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="2-D"):
        drift.ks_2samp(np.zeros((3, 2, 2)), np.zeros((3, 2, 2)))


# ------------------------------------------------------------------------------------------- Cramér-von Mises

CVM_SHAPES = [(2, 2, 1, "continuous"), (5, 8, 3, "ties"), (12, 9, 4, "continuous"), (20, 20, 3, "ties"),
              (20, 21, 2, "continuous"), (60, 45, 5, "ties"), (1000, 1000, 8, "continuous"),
              (1000, 700, 4, "ties")]


@pytest.mark.parametrize(("n", "m", "d", "kind"), CVM_SHAPES)
def test_cramervonmises_matches_scipy_per_column(n: int, m: int, d: int, kind: str) -> None:
    ref, cur = samples(n, m, d, kind, seed=n + 3 * m + d)
    statistic, p_value = drift.cramervonmises_2samp(ref, cur)
    for j in range(d):
        expected = stats.cramervonmises_2samp(ref[:, j], cur[:, j])
        assert statistic[j] == pytest.approx(expected.statistic, rel=RTOL, abs=1e-12)
        assert p_value[j] == pytest.approx(expected.pvalue, rel=RTOL, abs=1e-12)


@pytest.mark.parametrize("method", ["exact", "asymptotic"])
def test_cramervonmises_honours_an_explicit_method(method: str) -> None:
    ref, cur = samples(9, 12, 3, "ties", seed=11)
    _, p_value = drift.cramervonmises_2samp(ref, cur, method=method)
    for j in range(3):
        expected = stats.cramervonmises_2samp(ref[:, j], cur[:, j], method=method)
        assert p_value[j] == pytest.approx(expected.pvalue, rel=RTOL, abs=1e-12)


def test_cramervonmises_drops_nan_and_needs_two_values_per_side() -> None:
    ref, cur = samples(40, 30, 3, "continuous", seed=2)
    ref[::3, 0] = np.nan
    cur[1:, 2] = np.nan
    statistic, p_value = drift.cramervonmises_2samp(ref, cur)
    expected = stats.cramervonmises_2samp(ref[~np.isnan(ref[:, 0]), 0], cur[:, 0])
    assert statistic[0] == pytest.approx(expected.statistic, rel=RTOL)
    assert p_value[0] == pytest.approx(expected.pvalue, rel=RTOL)
    assert np.isnan(statistic[2]) and np.isnan(p_value[2])


# ------------------------------------------------------------------------------------------------ categorical


def test_chi2_matches_scipy_contingency_without_yates_correction() -> None:
    rng = np.random.default_rng(8)
    for _ in range(30):
        k = int(rng.integers(2, 9))
        ref = rng.integers(0, 40, (4, k)) * (rng.random((4, k)) > 0.2)
        cur = rng.integers(0, 40, (4, k)) * (rng.random((4, k)) > 0.2)
        statistic, p_value = drift.chi2_categorical(ref, cur)
        for j in range(4):
            table = np.stack([ref[j], cur[j]])
            table = table[:, table.sum(axis=0) > 0]
            if (table.sum(axis=1) == 0).any():
                assert np.isnan(statistic[j]) and np.isnan(p_value[j])
                continue
            expected = stats.chi2_contingency(table, correction=False)
            assert statistic[j] == pytest.approx(expected.statistic, rel=RTOL, abs=1e-12)
            assert p_value[j] == pytest.approx(expected.pvalue, rel=RTOL, abs=ATOL)


def test_chi2_with_one_observed_category_or_an_empty_side() -> None:
    statistic, p_value = drift.chi2_categorical([[10, 0, 0], [5, 5, 0]], [[7, 0, 0], [0, 0, 0]])
    assert (statistic[0], p_value[0]) == (0.0, 1.0)
    assert np.isnan(statistic[1]) and np.isnan(p_value[1])


def test_jensen_shannon_matches_scipy_base_2() -> None:
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 30, (6, 5)).astype(float)
    cur = rng.integers(0, 30, (6, 5)).astype(float)
    cur[0] = ref[0] * 3
    expected = [distance.jensenshannon(ref[j], cur[j], base=2) for j in range(6)]
    np.testing.assert_allclose(drift.jensen_shannon(ref, cur), expected, rtol=1e-12, atol=1e-12)
    assert drift.jensen_shannon([[1, 0]], [[0, 1]])[0] == pytest.approx(1.0)
    assert np.isnan(drift.jensen_shannon([[1, 2]], [[0, 0]])[0])


# ------------------------------------------------------------------------------------------------ Wasserstein


def test_wasserstein_is_scipys_distance_over_the_reference_std() -> None:
    ref, cur = samples(300, 200, 4, "ties", seed=9)
    ref[::4, 1] = np.nan
    result = drift.wasserstein_normalised(ref, cur)
    for j in range(4):
        a = ref[~np.isnan(ref[:, j]), j]
        expected = stats.wasserstein_distance(a, cur[:, j]) / np.std(a)
        assert result[j] == pytest.approx(expected, rel=1e-12)


def test_wasserstein_of_a_constant_reference_is_zero_and_of_an_empty_side_nan() -> None:
    ref = np.column_stack([np.full(10, 2.0), np.arange(10.0)])
    cur = np.column_stack([np.arange(10.0), np.full(10, np.nan)])
    result = drift.wasserstein_normalised(ref, cur)
    assert result[0] == 0.0
    assert np.isnan(result[1])
