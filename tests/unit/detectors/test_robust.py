"""Robust centre and spread of reference columns, and the extreme reference rows set aside before fitting."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.detectors.robust import EXTREME_Z, MAX_EXTREME_FRACTION, CentreSpread, centre_spread, extreme_rows


def iqr_spread(values: np.ndarray) -> np.ndarray:
    low, high = np.quantile(values, [0.25, 0.75], axis=0)
    return np.asarray((high - low) / 1.349)


def test_centre_is_the_median_and_spread_the_iqr_scaled_to_a_standard_deviation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[0.0, 5.0, -3.0], scale=[1.0, 2.0, 0.1], size=(2000, 3))
    scale = centre_spread(x)
    np.testing.assert_allclose(scale.centre, np.median(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(scale.spread, iqr_spread(x), rtol=1e-12)


def test_on_normal_data_the_spread_estimates_the_standard_deviation() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(loc=[0.0, 5.0, -3.0], scale=[1.0, 2.0, 0.1], size=(20000, 3))
    np.testing.assert_allclose(centre_spread(x).spread, [1.0, 2.0, 0.1], rtol=0.03)


def test_a_column_with_zero_iqr_falls_back_to_the_standard_deviation_of_its_central_99_percent() -> None:
    rng = np.random.default_rng(2)
    column = np.zeros(1000)
    column[rng.choice(1000, 100, replace=False)] = rng.normal(scale=5.0, size=100)  # 90% zeros: IQR 0
    low, high = np.quantile(column, [0.005, 0.995])
    expected = np.std(column[(column >= low) & (column <= high)])
    assert iqr_spread(column[:, None])[0] == 0.0
    assert centre_spread(column[:, None]).spread[0] == pytest.approx(expected, rel=1e-12)


def test_a_mostly_constant_column_keeps_a_small_spread_despite_one_huge_value() -> None:
    rng = np.random.default_rng(3)
    column = np.zeros(1000)
    column[:50] = rng.normal(scale=0.5, size=50)
    column[999] = 1e6
    spread = centre_spread(column[:, None]).spread[0]
    assert 0.0 < spread < 1.0
    assert np.std(column) > 1e4  # what a plain standard deviation would have given


def test_a_column_constant_but_for_a_few_values_falls_back_to_the_standard_deviation_of_all_values() -> None:
    column = np.zeros(1000)
    column[-4:] = 100.0  # the central 99% is all zeros, so its standard deviation is 0 too
    spread = centre_spread(column[:, None]).spread[0]
    assert spread == pytest.approx(np.std(column), rel=1e-12)


def test_a_constant_column_has_spread_one_and_its_value_as_centre() -> None:
    x = np.column_stack([np.full(100, 7.5), np.random.default_rng(4).normal(size=100)])
    scale = centre_spread(x)
    assert (scale.centre[0], scale.spread[0]) == (7.5, 1.0)


def test_an_all_nan_column_has_centre_zero_and_spread_one() -> None:
    x = np.column_stack([np.full(50, np.nan), np.arange(50.0)])
    scale = centre_spread(x)
    assert (scale.centre[0], scale.spread[0]) == (0.0, 1.0)
    assert np.isfinite(scale.centre).all() and np.isfinite(scale.spread).all()


def test_nan_and_infinite_values_are_ignored() -> None:
    rng = np.random.default_rng(5)
    clean = rng.normal(size=(500, 3))
    dirty = clean.copy()
    dirty[:40, 0] = np.nan
    dirty[100:110, 1] = np.inf
    dirty[200:230, 2] = -np.inf
    dirty[300:305, 2] = np.nan
    scale = centre_spread(dirty)
    for column in range(3):
        kept = dirty[np.isfinite(dirty[:, column]), column]
        assert scale.centre[column] == pytest.approx(np.median(kept), rel=1e-12)
        assert scale.spread[column] == pytest.approx(iqr_spread(kept[:, None])[0], rel=1e-12)


def test_the_spread_is_positive_in_every_column() -> None:
    x = np.column_stack([np.zeros(20), np.full(20, np.nan), np.arange(20.0), np.r_[np.zeros(19), 1.0]])
    assert (centre_spread(x).spread > 0).all()


def test_a_huge_value_among_a_thousand_normal_rows_is_extreme() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1000, 5))
    x[417, 3] = 1e6
    assert np.flatnonzero(extreme_rows(x)).tolist() == [417]


@pytest.mark.parametrize("seed", range(5))
def test_clean_normal_rows_are_never_extreme(seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(1000, 20))
    assert not extreme_rows(x, bound=12.0).any()


def test_the_default_bound_is_twelve_spreads() -> None:
    assert EXTREME_Z == 12.0
    x = np.random.default_rng(7).normal(size=(1000, 2))
    scale = centre_spread(x)
    x[10, 0] = scale.centre[0] + 11.9 * scale.spread[0]
    x[20, 1] = scale.centre[1] - 12.1 * scale.spread[1]
    assert np.flatnonzero(extreme_rows(x, scale=scale)).tolist() == [20]


def test_no_more_than_max_fraction_of_rows_are_set_aside_the_most_extreme_first() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 3))
    wild = [5, 50, 90, 120, 150, 170, 199]
    for rank, row in enumerate(wild):
        x[row, rank % 3] = 100.0 * (rank + 1)  # row 199 is the most extreme
    mask = extreme_rows(x, max_fraction=0.02)  # floor(200 * 0.02) = 4 rows at most
    assert np.flatnonzero(mask).tolist() == [120, 150, 170, 199]


def test_the_default_fraction_caps_the_rows_set_aside_at_two_percent() -> None:
    assert MAX_EXTREME_FRACTION == 0.02
    rng = np.random.default_rng(9)
    x = rng.normal(size=(1000, 4))
    x[:100, 0] = rng.uniform(1e3, 1e6, size=100)  # 10% extreme rows
    mask = extreme_rows(x)
    assert mask.sum() == 20
    assert x[mask, 0].min() >= np.sort(x[:100, 0])[-20]


def test_a_small_reference_may_still_set_its_one_extreme_row_aside() -> None:
    x = np.random.default_rng(12).normal(size=(20, 2))
    x[0, 0] = 1e6
    x[1, 1] = -1e6
    assert np.flatnonzero(extreme_rows(x)).tolist() == [0]  # at least one row, the most extreme first


def test_all_extreme_rows_are_set_aside_when_they_are_within_the_fraction() -> None:
    x = np.random.default_rng(10).normal(size=(1000, 3))
    x[[3, 30, 300], [0, 1, 2]] = [1e3, -1e4, 1e5]
    assert np.flatnonzero(extreme_rows(x)).tolist() == [3, 30, 300]


def test_nan_and_infinite_values_never_make_a_row_extreme() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1000, 4))
    x[1, 0] = np.nan
    x[2, 1] = np.inf
    x[3, 2] = -np.inf
    x[4, :] = np.nan
    x[500, 3] = 1e6
    assert np.flatnonzero(extreme_rows(x)).tolist() == [500]


def test_a_given_scale_is_used_instead_of_the_rows_own() -> None:
    x = np.zeros((100, 1))
    x[7, 0] = 5.0
    tight = CentreSpread(np.zeros(1), np.full(1, 0.1))
    assert np.flatnonzero(extreme_rows(x, scale=tight)).tolist() == [7]
    assert not extreme_rows(x, scale=CentreSpread(np.zeros(1), np.full(1, 10.0))).any()


@pytest.mark.parametrize("shape", [(0, 3), (10, 0)])
def test_empty_inputs_have_no_extreme_row(shape: tuple[int, int]) -> None:
    mask = extreme_rows(np.empty(shape))
    assert mask.shape == (shape[0],) and mask.dtype == bool and not mask.any()
