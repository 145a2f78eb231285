"""Multiple-testing correction: BH as alibi-detect's fdr and SciPy's adjusted p-values, and Bonferroni."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sidecar.detectors.correction import correct


def textbook_bh(p: np.ndarray, alpha: float) -> tuple[bool, float]:
    """alibi-detect's fdr: largest k with p_(k) < alpha k / d; (any rejected, the cutoff at that k)."""
    d = p.size
    cutoffs = alpha * np.arange(1, d + 1) / d
    below = np.sort(p) < cutoffs
    if not below.any():
        return False, cutoffs[0]
    return True, cutoffs[np.where(below)[0].max()]


@pytest.mark.parametrize("seed", range(40))
def test_bh_decision_and_threshold_follow_the_step_up_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 60))
    p = rng.uniform(size=d) ** rng.uniform(0.5, 6)  # from null-like to many small p-values
    result = correct(p, "bh", 0.05)
    drift, threshold = textbook_bh(p, 0.05)
    assert result.drift == drift
    assert result.threshold == threshold
    np.testing.assert_array_equal(result.rejected, p < threshold)
    np.testing.assert_allclose(result.adjusted, stats.false_discovery_control(p, method="bh"), rtol=1e-12)


def test_bh_rejects_every_p_value_up_to_the_largest_passing_rank() -> None:
    p = np.array([0.045, 0.001, 0.2, 0.011, 0.035])  # cutoffs .01 .02 .03 .04 .05: only ranks 1 and 2 pass
    result = correct(p, "bh", 0.05)
    assert result.rejected.tolist() == [False, True, False, True, False]
    assert result.threshold == pytest.approx(0.02)
    assert result.drift


def test_bonferroni_compares_with_alpha_over_the_feature_count() -> None:
    p = np.array([0.004, 0.011, 0.5, 0.0099])
    result = correct(p, "bonferroni", 0.04)
    assert result.threshold == 0.01
    assert result.rejected.tolist() == [True, False, False, True]
    np.testing.assert_allclose(result.adjusted, [0.016, 0.044, 1.0, 0.0396])
    assert result.drift


@pytest.mark.parametrize("method", ["bh", "bonferroni"])
def test_drift_means_the_smallest_adjusted_p_value_is_below_alpha(method: str) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        p = rng.uniform(size=20) ** 3
        result = correct(p, method, 0.05)
        assert result.drift == (result.adjusted.min() < 0.05)


def test_untestable_features_count_as_p_equal_to_one() -> None:
    result = correct(np.array([np.nan, 0.001]), "bh", 0.05)
    assert result.adjusted[0] == 1.0
    assert result.rejected.tolist() == [False, True]


def test_no_features_mean_no_drift() -> None:
    result = correct(np.array([]), "bh", 0.05)
    assert not result.drift and result.adjusted.size == 0


def test_unknown_method_and_bad_alpha_are_rejected() -> None:
    with pytest.raises(ValueError, match="correction"):
        correct(np.array([0.1]), "holm")
    with pytest.raises(ValueError, match="alpha"):
        correct(np.array([0.1]), "bh", 1.5)
