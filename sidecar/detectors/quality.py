"""Data-quality counts per feature: missing values, infinities, and values outside the reference range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sidecar.detectors.two_sample import as_matrix

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class QualityCounts:
    """Counts per feature over `rows` rows. Range checks cover finite values only, so each value lands in at most
    one of the four counts; a NaN bound (a feature without reference values) never counts."""

    rows: int
    missing: IntArray  # NaN
    inf: IntArray  # +inf or -inf
    below_min: IntArray  # finite and < reference min
    above_max: IntArray  # finite and > reference max
    row_issues: IntArray | None = None  # per row, a bit per issue found in any feature (ROW_* bits); when asked


ROW_MISSING = 1  # a NaN
ROW_INF = 2
ROW_BELOW_MIN = 4
ROW_ABOVE_MAX = 8


def quality_counts(x: npt.ArrayLike, ref_min: npt.ArrayLike, ref_max: npt.ArrayLike,
                   per_row: bool = False) -> QualityCounts:
    """The counts per feature; with `per_row`, also which issues each row has (`row_issues`)."""
    values = as_matrix(x)
    low = np.broadcast_to(np.asarray(ref_min, dtype=np.float64), values.shape[1:])
    high = np.broadcast_to(np.asarray(ref_max, dtype=np.float64), values.shape[1:])
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        below = finite & (values < low)
        above = finite & (values > high)
    missing = np.isnan(values)
    inf = np.isinf(values)
    row_issues = None
    if per_row:
        row_issues = (missing.any(axis=1) * ROW_MISSING + inf.any(axis=1) * ROW_INF
                      + below.any(axis=1) * ROW_BELOW_MIN + above.any(axis=1) * ROW_ABOVE_MAX).astype(np.int64)
    return QualityCounts(
        rows=int(values.shape[0]),
        missing=missing.sum(axis=0, dtype=np.int64),
        inf=inf.sum(axis=0, dtype=np.int64),
        below_min=below.sum(axis=0, dtype=np.int64),
        above_max=above.sum(axis=0, dtype=np.int64),
        row_issues=row_issues,
    )
