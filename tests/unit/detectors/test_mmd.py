"""MMD drift: the vectorised permutation test equals a naive loop, and the TensorFlow backend equals numpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sidecar.detectors.mmd import (
    PERMUTATION_BLOCK,
    MMDDrift,
    draw_permutations,
    resolve_backend,
    tensorflow_sees_gpu,
)


def naive_gamma(pooled: np.ndarray) -> float:
    """1 / lower median of the squared distances over distinct pairs, by explicit loops."""
    distances = sorted(float(np.sum((pooled[i] - pooled[j]) ** 2))
                       for i in range(len(pooled)) for j in range(i + 1, len(pooled)))
    return 1.0 / distances[(len(distances) - 1) // 2]


def naive_mmd2(x: np.ndarray, y: np.ndarray, gamma: float) -> float:
    """Unbiased MMD^2 with k(a, b) = exp(-gamma ||a - b||^2), by explicit loops over pairs."""
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-gamma * np.sum((a - b) ** 2)))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def naive_test(ref: np.ndarray, cur: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    pooled = np.concatenate([ref, cur])
    gamma = naive_gamma(pooled)
    observed = naive_mmd2(ref, cur, gamma)
    orders = draw_permutations(np.random.default_rng(seed), len(pooled), permutations)
    permuted = [naive_mmd2(pooled[order[:len(ref)]], pooled[order[len(ref):]], gamma) for order in orders]
    return observed, float(np.mean(np.array(permuted) >= observed))


@pytest.mark.parametrize(("n", "m", "d", "shift"), [(12, 9, 3, 0.0), (10, 10, 1, 0.8), (15, 6, 4, 0.3)])
def test_statistic_and_p_value_equal_a_naive_loop_with_the_same_permutations(
        n: int, m: int, d: int, shift: float) -> None:
    rng = np.random.default_rng(n * m + d)
    ref, cur = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift
    result = MMDDrift(ref, permutations=60, backend="numpy", seed=7).test(cur)
    observed, p_value = naive_test(ref, cur, 60, seed=7)
    assert result.distance == pytest.approx(observed, rel=1e-9, abs=1e-12)
    assert result.p_value == p_value
    assert result.drift == (p_value < 0.05)


def test_permutations_tested_in_several_blocks_are_the_ones_drawn_all_at_once() -> None:
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(size=(14, 3)), rng.normal(size=(8, 3)) + 0.4
    permutations = 2 * PERMUTATION_BLOCK + 76  # three blocks, the last one partial
    result = MMDDrift(ref, permutations=permutations, backend="numpy", seed=3).test(cur)
    observed, p_value = naive_test(ref, cur, permutations, seed=3)
    assert result.distance == pytest.approx(observed, rel=1e-9, abs=1e-12)
    assert result.p_value == p_value


def test_a_fixed_bandwidth_gives_the_gaussian_kernel_with_that_sigma() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=(9, 2)), rng.normal(size=(8, 2))
    result = MMDDrift(ref, permutations=10, backend="numpy", seed=0, sigma=0.7).test(cur)
    assert result.distance == pytest.approx(naive_mmd2(ref, cur, 1 / (2 * 0.7**2)), rel=1e-9, abs=1e-12)


def test_tensorflow_backend_equals_numpy_backend() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=(200, 5)), rng.normal(size=(150, 5)) + 0.15
    numpy_detector = MMDDrift(ref, permutations=100, backend="numpy", seed=3)
    tf_detector = MMDDrift(ref, permutations=100, backend="tensorflow", seed=3)
    assert tf_detector.backend == "tensorflow"
    for window in (cur, rng.normal(size=(150, 5))):
        expected, actual = numpy_detector.test(window), tf_detector.test(window)
        assert actual.distance == pytest.approx(expected.distance, rel=1e-9, abs=1e-12)
        assert (actual.p_value, actual.drift) == (expected.p_value, expected.drift)


def test_fires_on_a_clear_shift_and_not_on_the_same_distribution() -> None:
    rng = np.random.default_rng(4)
    detector = MMDDrift(rng.normal(size=(300, 8)), permutations=100, backend="numpy", seed=5)
    shifted = detector.test(rng.normal(size=(300, 8)) + 0.5)
    same = detector.test(rng.normal(size=(300, 8)))
    assert shifted.drift and shifted.p_value == 0.0
    assert not same.drift and same.p_value >= 0.05
    assert same.detector == "mmd" and same.features == [] and same.threshold == 0.05


def test_identical_constant_samples_are_not_drift() -> None:
    detector = MMDDrift(np.ones((20, 3)), permutations=30, backend="numpy", seed=0)
    result = detector.test(np.ones((15, 3)))
    assert result.distance == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == 1.0 and not result.drift


def test_rows_with_non_finite_values_are_dropped_and_tiny_windows_are_not_tested() -> None:
    rng = np.random.default_rng(6)
    ref = rng.normal(size=(30, 2))
    cur = rng.normal(size=(20, 2))
    with_nan = np.vstack([cur, [[np.nan, 1.0], [np.inf, 0.0]]])
    a = MMDDrift(ref, permutations=20, backend="numpy", seed=1).test(cur)
    b = MMDDrift(ref, permutations=20, backend="numpy", seed=1).test(with_nan)
    assert (a.distance, a.p_value) == (b.distance, b.p_value)
    tiny = MMDDrift(ref, permutations=20, backend="numpy").test(cur[:1])
    assert not tiny.drift and tiny.p_value == 1.0 and tiny.distance is None


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="reference rows"):
        MMDDrift(np.ones((1, 2)), backend="numpy")
    with pytest.raises(ValueError, match="backend"):
        MMDDrift(np.ones((5, 2)), backend="torch")
    with pytest.raises(ValueError, match="features"):
        MMDDrift(np.zeros((5, 2)), backend="numpy").test(np.zeros((5, 3)))


def test_auto_backend_is_tensorflow_exactly_when_tensorflow_sees_a_gpu() -> None:
    assert resolve_backend("auto") == ("tensorflow" if tensorflow_sees_gpu() else "numpy")


def test_importing_the_detectors_and_using_numpy_mmd_does_not_import_tensorflow() -> None:
    code = ("import sys, numpy as np\n"
            "import sidecar.detectors.feature_drift, sidecar.detectors.two_sample, sidecar.detectors.mmd\n"
            "import sidecar.detectors.mahalanobis\n"
            "import sidecar.detectors.autoencoder, sidecar.detectors.quality, sidecar.detectors.correction\n"
            "from sidecar.detectors.mmd import MMDDrift\n"
            "MMDDrift(np.random.default_rng(0).normal(size=(20, 2)), backend='numpy').test(np.ones((5, 2)))\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).resolve().parents[3])


def test_each_side_is_capped_at_max_rows_by_uniform_sampling() -> None:
    rng = np.random.default_rng(8)
    detector = MMDDrift(rng.normal(size=(500, 2)), permutations=50, backend="numpy", seed=2, max_rows=100)
    assert detector.reference_rows == 100
    assert detector.test(rng.normal(size=(400, 2)) + 1.0).drift
    assert not detector.test(rng.normal(size=(400, 2))).drift
