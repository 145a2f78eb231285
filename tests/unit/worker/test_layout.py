"""Which columns the detectors analyse: each one up to `max_features` numeric columns, a projection beyond."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from sidecar.worker.features import CATEGORICAL, EXCLUDED, NUMERIC
from sidecar.worker.layout import Layout

PROJECTED_SUMMARIES = ["projection#residual", "projection#mean", "projection#std"]


def mixed(rows: int, numeric: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """`numeric` numeric columns with a categorical column after the first and an excluded one after the second."""
    rng = np.random.default_rng(seed)
    kinds = [NUMERIC] * numeric
    kinds.insert(1, CATEGORICAL)
    kinds.insert(3, EXCLUDED)
    names = [f"c{i}" for i in range(len(kinds))]
    raw = rng.normal(size=(rows, len(kinds)))
    raw[:, 1] = rng.integers(0, 4, size=rows)
    raw[:, 3] = rng.integers(0, 1000, size=rows)
    return names, kinds, raw


def structured(rng: np.random.Generator, rows: int, basis: np.ndarray) -> np.ndarray:
    """Rows on the span of `basis` (latent sd 3) plus unit noise in every column."""
    latent = rng.normal(scale=3.0, size=(rows, basis.shape[0]))
    return np.asarray(latent @ basis + rng.normal(size=(rows, basis.shape[1])))


def test_up_to_max_features_numeric_columns_every_analysed_column_is_kept_in_order() -> None:
    names, kinds, raw = mixed(50, numeric=4)
    layout = Layout(names, kinds, raw, max_features=4, components=2)
    assert not layout.projected
    assert layout.names == ["c0", "c1", "c2", "c4", "c5"]
    assert layout.kinds == [NUMERIC, CATEGORICAL, NUMERIC, NUMERIC, NUMERIC]


def test_per_feature_transform_keeps_the_analysed_columns_values() -> None:
    names, kinds, raw = mixed(50, numeric=4)
    layout = Layout(names, kinds, raw, max_features=10, components=2)
    np.testing.assert_array_equal(layout.transform(raw), raw[:, [0, 1, 2, 4, 5]])


def test_per_feature_detectors_are_fitted_on_the_whole_reference() -> None:
    names, kinds, raw = mixed(50, numeric=4)
    layout = Layout(names, kinds, raw, max_features=4, components=2)
    np.testing.assert_array_equal(layout.detector_reference(raw), raw)


def test_per_feature_description_says_how_many_columns_are_analysed() -> None:
    names, kinds, raw = mixed(50, numeric=4)
    assert Layout(names, kinds, raw, max_features=4, components=2).describe() == {
        "mode": "per_feature", "analysed_columns": 5}


def test_beyond_max_features_the_numeric_columns_become_the_projection_and_categorical_columns_stay() -> None:
    names, kinds, raw = mixed(100, numeric=5)
    layout = Layout(names, kinds, raw, max_features=4, components=3)
    assert layout.projected
    assert layout.names == ["c1", "projection[pc0]", "projection[pc1]", "projection[pc2]", *PROJECTED_SUMMARIES]
    assert layout.kinds == [CATEGORICAL] + [NUMERIC] * 6


def test_projected_transform_keeps_categorical_values_then_the_projection_of_the_numeric_columns() -> None:
    names, kinds, raw = mixed(100, numeric=5)
    layout = Layout(names, kinds, raw, max_features=4, components=3)
    assert layout.projection is not None
    fresh = mixed(20, numeric=5, seed=1)[2]
    out = layout.transform(fresh)
    assert out.shape == (20, 7)
    np.testing.assert_array_equal(out[:, 0], fresh[:, 1])
    np.testing.assert_array_equal(out[:, 1:], layout.projection.transform(fresh[:, [0, 2, 4, 5, 6]]))


def test_projected_detectors_are_fitted_on_the_other_half_of_the_reference() -> None:
    names, kinds, raw = mixed(100, numeric=5)
    layout = Layout(names, kinds, raw, max_features=4, components=3)
    np.testing.assert_array_equal(layout.detector_reference(raw), raw[1::2])


def test_the_projection_is_fitted_on_every_other_row_only() -> None:
    names, kinds, raw = mixed(100, numeric=5)
    changed = raw.copy()
    changed[1::2] = changed[1::2] * 50.0 + 7.0
    original = Layout(names, kinds, raw, max_features=4, components=3).projection
    other = Layout(names, kinds, changed, max_features=4, components=3).projection
    assert original is not None and other is not None
    np.testing.assert_array_equal(original.components, other.components)
    np.testing.assert_array_equal(original.offset, other.offset)


def test_rows_with_non_finite_values_are_left_out_of_the_projections_fit() -> None:
    names, kinds, raw = mixed(100, numeric=5)
    broken = raw.copy()
    broken[10, 0] = np.nan
    broken[20, 4] = np.inf  # rows 10 and 20 are in the half the projection is fitted on
    layout = Layout(names, kinds, broken, max_features=4, components=3)
    without = Layout(names, kinds, np.delete(raw, [10, 11, 20, 21], axis=0), max_features=4, components=3)
    assert layout.projection is not None and without.projection is not None
    np.testing.assert_allclose(layout.projection.components, without.projection.components, rtol=1e-12)
    np.testing.assert_allclose(layout.projection.offset, without.projection.offset, rtol=1e-12)


def test_a_reference_too_small_for_a_projection_stays_per_feature() -> None:
    names, kinds, raw = mixed(2, numeric=5)  # one row to fit a projection on
    layout = Layout(names, kinds, raw, max_features=4, components=3)
    assert not layout.projected
    assert layout.names == ["c0", "c1", "c2", "c4", "c5", "c6"]


def test_projected_description_gives_columns_components_and_summaries() -> None:
    names, kinds, raw = mixed(100, numeric=5)
    assert Layout(names, kinds, raw, max_features=4, components=3).describe() == {
        "mode": "projected", "numeric_columns": 5, "components": 3, "summaries": PROJECTED_SUMMARIES,
        "analysed_columns": 7}


@pytest.fixture(scope="module")
def wide() -> tuple[Layout, np.ndarray, np.ndarray]:
    """A projected layout of 600 columns with an 8-dimensional structure plus noise, its reference and fresh rows
    drawn the same way."""
    rng = np.random.default_rng(11)
    basis = rng.normal(size=(8, 600)) / np.sqrt(8)
    reference = structured(rng, 1000, basis)
    layout = Layout([f"x{i}" for i in range(600)], [NUMERIC] * 600, reference, max_features=50, components=20)
    return layout, reference, structured(rng, 500, basis)


def residuals(layout: Layout, rows: np.ndarray) -> np.ndarray:
    return np.asarray(layout.transform(rows)[:, layout.names.index("projection#residual")])


def test_fresh_clean_rows_have_the_residuals_of_the_detectors_reference(
        wide: tuple[Layout, np.ndarray, np.ndarray]) -> None:
    layout, reference, fresh = wide
    expected = residuals(layout, layout.detector_reference(reference))
    assert ks_2samp(expected, residuals(layout, fresh)).pvalue > 0.01


def test_the_rows_the_projection_was_fitted_on_lie_closer_to_it_than_fresh_rows(
        wide: tuple[Layout, np.ndarray, np.ndarray]) -> None:
    layout, reference, fresh = wide
    in_sample, later = residuals(layout, reference[::2]), residuals(layout, fresh)
    assert ks_2samp(in_sample, later).pvalue < 1e-6
    assert np.median(in_sample) < np.median(later)
