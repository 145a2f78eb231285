"""Multiple-testing correction of per-feature p-values: the decision "did anything drift?".

Benjamini-Hochberg ("bh") follows alibi-detect's `fdr`: sort the p-values, find the largest rank k with
p_(k) < alpha * k / d (strict), and reject every p-value below that cutoff. Bonferroni rejects p < alpha / d.
`adjusted` holds the adjusted p-values (BH step-up, Bonferroni p * d, both capped at 1) in the input order, so
that `drift` is also "the smallest adjusted p-value is below alpha". NaN p-values (untestable features) count
as 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

METHODS = ("bh", "bonferroni")


@dataclass(frozen=True)
class CorrectionResult:
    drift: bool
    threshold: float  # cutoff on the raw p-values: rejected == p_values < threshold
    adjusted: npt.NDArray[np.float64]
    rejected: npt.NDArray[np.bool_]


def correct(p_values: npt.ArrayLike, method: str = "bh", alpha: float = 0.05) -> CorrectionResult:
    """Adjust p-values for the number of features and decide at level `alpha`.

    With BH and nothing rejected, `threshold` is alpha / d (the cutoff the smallest p-value had to beat).
    """
    if method not in METHODS:
        raise ValueError(f"correction must be one of {METHODS}, got {method!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64).ravel(), nan=1.0)
    d = p.size
    if d == 0:
        return CorrectionResult(False, alpha, p, np.zeros(0, dtype=bool))
    if method == "bonferroni":
        threshold = alpha / d
        adjusted = np.minimum(p * d, 1.0)
    else:
        threshold, adjusted = _benjamini_hochberg(p, alpha)
    rejected = p < threshold
    return CorrectionResult(bool(rejected.any()), threshold, adjusted, rejected)


def _benjamini_hochberg(p: npt.NDArray[np.float64], alpha: float) -> tuple[float, npt.NDArray[np.float64]]:
    d = p.size
    order = np.argsort(p, kind="stable")
    ranks = np.arange(1, d + 1)
    cutoffs = alpha * ranks / d
    below = np.flatnonzero(p[order] < cutoffs)
    threshold = float(cutoffs[below[-1]]) if below.size else float(cutoffs[0])
    stepped = np.minimum.accumulate((p[order] * d / ranks)[::-1])[::-1]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(stepped, 1.0)
    return threshold, adjusted
