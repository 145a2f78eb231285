"""Data-quality counts per feature: NaN, infinities, and finite values outside the reference range."""

from __future__ import annotations

import numpy as np

from sidecar.detectors.quality import ROW_ABOVE_MAX, ROW_BELOW_MIN, ROW_INF, ROW_MISSING, quality_counts


def test_each_issue_is_counted_per_feature() -> None:
    x = np.array([
        [np.nan, 5.0, -np.inf],
        [1.0, 11.0, 0.5],
        [-3.0, np.inf, np.nan],
        [2.0, 10.0, 2.0],
    ])
    counts = quality_counts(x, ref_min=[-1.0, 0.0, 0.0], ref_max=[1.5, 10.0, 1.0])
    assert counts.rows == 4
    assert counts.missing.tolist() == [1, 0, 1]
    assert counts.inf.tolist() == [0, 1, 1]
    assert counts.below_min.tolist() == [1, 0, 0]
    assert counts.above_max.tolist() == [1, 1, 1]


def test_values_on_the_bounds_are_in_range_and_open_bounds_never_count() -> None:
    x = np.array([[0.0, -1e300], [1.0, 1e300]])
    counts = quality_counts(x, ref_min=[0.0, -np.inf], ref_max=[1.0, np.inf])
    assert counts.below_min.tolist() == [0, 0] and counts.above_max.tolist() == [0, 0]


def test_a_feature_without_a_reference_range_counts_no_range_issues() -> None:
    counts = quality_counts(np.array([[5.0], [np.nan]]), ref_min=[np.nan], ref_max=[np.nan])
    assert (counts.below_min[0], counts.above_max[0], counts.missing[0]) == (0, 0, 1)


def test_an_empty_batch_counts_nothing() -> None:
    counts = quality_counts(np.zeros((0, 3)), np.zeros(3), np.ones(3))
    assert counts.rows == 0 and counts.missing.tolist() == [0, 0, 0]


def test_per_row_each_row_says_which_issues_any_of_its_features_has() -> None:
    x = np.array([[np.nan, 5.0, -np.inf], [1.0, 11.0, 0.5], [0.0, 5.0, 0.5], [-3.0, 12.0, np.nan]])
    counts = quality_counts(x, ref_min=[-1.0, 0.0, 0.0], ref_max=[1.5, 10.0, 1.0], per_row=True)
    assert counts.row_issues is not None
    assert counts.row_issues.tolist() == [ROW_MISSING | ROW_INF, ROW_ABOVE_MAX, 0,
                                          ROW_BELOW_MIN | ROW_ABOVE_MAX | ROW_MISSING]
    assert quality_counts(x, ref_min=[0, 0, 0], ref_max=[1, 1, 1]).row_issues is None
