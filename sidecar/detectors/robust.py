"""Robust statistics for references collected from traffic, where a few rows may be extreme or broken.

A reference is the first N instances a model sees; one of them may hold `1e6` where the others hold units, and
fitting a covariance, a range or a projection to it would blind the detectors for good (the mean and the
standard deviation of a column move with a single value). So:
- centre and spread are the median and the interquartile range (scaled to a standard deviation); a column whose
  IQR is 0 (mostly one value) falls back to the standard deviation of its central 99%, then of all its values;
- a row is extreme when some column lies more than `EXTREME_Z` such spreads from the median, and at most
  `MAX_EXTREME_FRACTION` of the rows (the most extreme ones; at least one row in a small reference) are set
  aside; the caller fits on the rest and says how many it left out.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

EXTREME_Z = 12.0
MAX_EXTREME_FRACTION = 0.02
_IQR_TO_SD = 1.349


class CentreSpread(NamedTuple):
    centre: np.ndarray
    spread: np.ndarray  # > 0 everywhere (1 for a constant column)


def centre_spread(x: np.ndarray) -> CentreSpread:
    """Per-column median and robust spread of `x` (rows = instances), ignoring NaN and infinite values."""
    finite = np.where(np.isfinite(x), x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        centre = np.nanmedian(finite, axis=0)
        low, high = np.nanquantile(finite, [0.25, 0.75], axis=0)
        spread = (high - low) / _IQR_TO_SD
        flat = ~(spread > 0)
        if np.any(flat):
            inner_low, inner_high = np.nanquantile(finite[:, flat], [0.005, 0.995], axis=0)
            inner = np.where((finite[:, flat] >= inner_low) & (finite[:, flat] <= inner_high), finite[:, flat], np.nan)
            fallback = np.nanstd(inner, axis=0)
            fallback = np.where(fallback > 0, fallback, np.nanstd(finite[:, flat], axis=0))
            spread[flat] = fallback
    centre = np.where(np.isfinite(centre), centre, 0.0)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    return CentreSpread(centre, spread)


def extreme_rows(x: np.ndarray, bound: float = EXTREME_Z, max_fraction: float = MAX_EXTREME_FRACTION,
                 scale: CentreSpread | None = None) -> np.ndarray:
    """Boolean mask of the rows to set aside: beyond `bound` robust spreads in some column, the most extreme
    `max_fraction` of rows at most. Non-finite values never make a row extreme (they are the caller's to drop)."""
    rows = x.shape[0]
    if rows == 0 or x.shape[1] == 0:
        return np.zeros(rows, dtype=bool)
    scale = scale or centre_spread(x)
    with np.errstate(invalid="ignore"):
        z = np.abs(x - scale.centre) / scale.spread
    z = np.where(np.isfinite(z), z, 0.0)
    worst = z.max(axis=1)
    candidates = np.flatnonzero(worst > bound)
    limit = max(1, int(np.floor(rows * max_fraction)))
    if candidates.size > limit:
        candidates = candidates[np.argsort(-worst[candidates], kind="stable")[:limit]]
    mask = np.zeros(rows, dtype=bool)
    mask[candidates] = True
    return mask
