"""The feature drift detector: a test per feature, the correction, the decision, and per-feature summaries."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sidecar.detectors.correction import correct
from sidecar.detectors.feature_drift import DriftResult, FeatureDriftDetector


def names(d: int) -> list[str]:
    return [f"f{i}" for i in range(d)]


@pytest.fixture
def reference() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1000, 6))


def test_a_clear_shift_in_one_feature_is_drift_in_that_feature_only(reference: np.ndarray) -> None:
    current = np.random.default_rng(1).normal(size=(1000, 6))
    current[:, 2] += 0.5
    result = FeatureDriftDetector(reference, names(6)).test(current)
    assert isinstance(result, DriftResult)
    assert result.drift and result.detector == "feature_drift"
    assert [f.name for f in result.features if f.drift] == ["f2"]
    assert result.p_value == min(f.adjusted_p_value for f in result.features) < result.threshold == 0.05


@pytest.mark.parametrize("test", ["ks", "cvm"])
def test_a_sample_from_the_reference_distribution_is_not_drift(reference: np.ndarray, test: str) -> None:
    current = np.random.default_rng(2).normal(size=(1000, 6))
    result = FeatureDriftDetector(reference, names(6), test=test).test(current)
    assert not result.drift
    assert not any(f.drift for f in result.features)


def test_the_reference_itself_is_never_drift(reference: np.ndarray) -> None:
    result = FeatureDriftDetector(reference, names(6)).test(reference)
    assert not result.drift
    assert all(f.statistic == 0.0 and f.p_value == 1.0 for f in result.features)


@pytest.mark.parametrize(("test", "scipy_test"), [("ks", stats.ks_2samp), ("cvm", stats.cramervonmises_2samp)])
def test_feature_p_values_are_the_tests_and_adjusted_ones_the_corrections(
        reference: np.ndarray, test: str, scipy_test: object) -> None:
    current = np.random.default_rng(3).normal(size=(700, 6)) * 1.1
    result = FeatureDriftDetector(reference, names(6), test=test, correction="bonferroni").test(current)
    p = np.array([scipy_test(reference[:, j], current[:, j]).pvalue for j in range(6)])  # type: ignore[operator]
    np.testing.assert_allclose([f.p_value for f in result.features], p, rtol=1e-9)
    expected = correct(p, "bonferroni", 0.05)
    np.testing.assert_allclose([f.adjusted_p_value for f in result.features], expected.adjusted, rtol=1e-9)
    assert result.drift == expected.drift


def test_categorical_columns_use_chi_squared_and_count_unknown_categories(reference: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    reference = reference.copy()
    reference[:, 1] = rng.choice([0.0, 1.0, 2.0], size=1000, p=[0.5, 0.3, 0.2])
    current = rng.normal(size=(800, 6))
    current[:, 1] = rng.choice([0.0, 1.0, 2.0, 7.0], size=800, p=[0.3, 0.3, 0.2, 0.2])
    detector = FeatureDriftDetector(reference, names(6), categorical={1: np.array([0.0, 1.0, 2.0])})
    feature = detector.test(current).features[1]
    ref_counts = [np.sum(reference[:, 1] == v) for v in (0, 1, 2)] + [0]
    cur_counts = [np.sum(current[:, 1] == v) for v in (0, 1, 2)] + [np.sum(current[:, 1] == 7)]
    expected = stats.chi2_contingency(np.array([ref_counts, cur_counts])[:, [0, 1, 2, 3]], correction=False)
    assert feature.kind == "categorical" and feature.drift
    assert feature.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert feature.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert feature.current["__other__"] == pytest.approx(np.mean(current[:, 1] == 7))
    assert feature.reference["0"] == pytest.approx(np.mean(reference[:, 1] == 0))
    assert 0 < feature.effect_size <= 1


def test_coded_categories_are_summarised_by_the_names_given_for_them() -> None:
    rng = np.random.default_rng(3)
    reference = rng.choice([0.0, 1.0, 2.0, 3.0], size=(400, 1), p=[0.4, 0.3, 0.2, 0.1])
    current = rng.choice([0.0, 3.0, 9.0], size=(300, 1), p=[0.5, 0.3, 0.2])
    detector = FeatureDriftDetector(reference, ["city"], categorical={0: np.arange(4.0)},
                                    category_names={0: ["oslo", "rome", "count", "__other__"]})
    feature = detector.test(current).features[0]
    share = {value: float(np.mean(current[:, 0] == value)) for value in (0.0, 3.0, 9.0)}
    # code 3 is the name a vocabulary gives the code its overflow shares: counted with the unknown category 9
    assert feature.current == pytest.approx({"count": 300.0, "oslo": share[0.0], "__other__": share[3.0] + share[9.0]})
    assert feature.reference["'count'"] == pytest.approx(np.mean(reference[:, 0] == 2.0))  # not the summary's count
    assert feature.reference["count"] == 400.0 and feature.reference["rome"] == pytest.approx(np.mean(reference == 1))


def test_non_finite_values_are_left_out_of_tests_and_summaries(reference: np.ndarray) -> None:
    current = np.random.default_rng(5).normal(size=(500, 6))
    current[:50, 0] = np.nan
    current[50:60, 0] = np.inf
    feature = FeatureDriftDetector(reference, names(6)).test(current).features[0]
    finite = current[60:, 0]
    assert feature.p_value == pytest.approx(stats.ks_2samp(reference[:, 0], finite).pvalue, rel=1e-9)
    assert feature.current["count"] == 440
    assert feature.current["mean"] == pytest.approx(finite.mean())
    assert feature.current["max"] == finite.max()


def test_numeric_summaries_describe_both_samples(reference: np.ndarray) -> None:
    current = np.random.default_rng(6).normal(size=(301, 6)) + 1.0
    feature = FeatureDriftDetector(reference, names(6)).test(current).features[4]
    for summary, sample in ((feature.reference, reference[:, 4]), (feature.current, current[:, 4])):
        assert summary["count"] == sample.size
        assert summary["mean"] == pytest.approx(sample.mean())
        assert summary["std"] == pytest.approx(sample.std())
        assert (summary["min"], summary["max"]) == (sample.min(), sample.max())
        assert summary["p50"] == pytest.approx(np.median(sample))
    expected_effect = stats.wasserstein_distance(reference[:, 4], current[:, 4]) / reference[:, 4].std()
    assert feature.effect_size == pytest.approx(expected_effect, rel=1e-12)


def test_a_feature_without_values_in_the_window_is_untestable_not_drift(reference: np.ndarray) -> None:
    current = np.random.default_rng(7).normal(size=(100, 6))
    current[:, 3] = np.nan
    feature = FeatureDriftDetector(reference, names(6)).test(current).features[3]
    assert np.isnan(feature.statistic) and feature.p_value == 1.0 and not feature.drift
    assert feature.current == {"count": 0.0}


def test_constant_columns_and_a_single_feature_work() -> None:
    reference = np.full((50, 1), 4.0)
    detector = FeatureDriftDetector(reference, ["only"])
    assert not detector.test(np.full((20, 1), 4.0)).drift
    shifted = detector.test(np.full((20, 1), 5.0))
    assert shifted.drift and shifted.features[0].effect_size == 0.0  # zero reference spread: no scale


def test_tiny_and_empty_windows_are_handled() -> None:
    reference = np.arange(10.0)[:, None]
    detector = FeatureDriftDetector(reference, ["x"])
    one = detector.test(np.array([[3.0]]))
    assert one.features[0].p_value == pytest.approx(stats.ks_2samp(np.arange(10.0), [3.0]).pvalue)
    empty = detector.test(np.zeros((0, 1)))
    assert not empty.drift and empty.p_value == 1.0


def test_a_detector_without_features_reports_no_drift() -> None:
    result = FeatureDriftDetector(np.zeros((5, 0)), []).test(np.zeros((3, 0)))
    assert (result.drift, result.p_value, result.features) == (False, 1.0, [])


def test_reference_range_is_the_finite_min_and_max_of_numeric_features() -> None:
    reference = np.array([[1.0, 0.0], [np.inf, 1.0], [-2.0, 1.0], [np.nan, 0.0]])
    detector = FeatureDriftDetector(reference, ["a", "b"], categorical={1: np.array([0.0, 1.0])})
    assert detector.reference_min[0] == -2.0 and detector.reference_max[0] == 1.0
    assert np.isnan(detector.reference_min[1])


def test_bad_configuration_is_rejected(reference: np.ndarray) -> None:
    with pytest.raises(ValueError, match="names"):
        FeatureDriftDetector(reference, names(5))
    with pytest.raises(ValueError, match="test"):
        FeatureDriftDetector(reference, names(6), test="t")
    with pytest.raises(ValueError, match="correction"):
        FeatureDriftDetector(reference, names(6), correction="holm")
    with pytest.raises(ValueError, match="categorical column"):
        FeatureDriftDetector(reference, names(6), categorical={6: np.array([0.0])})
    with pytest.raises(ValueError, match="features"):
        FeatureDriftDetector(reference, names(6)).test(np.zeros((10, 5)))
