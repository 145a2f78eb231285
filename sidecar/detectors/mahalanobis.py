"""Outlier scores: Mahalanobis distance to the reference under a shrunk covariance.

Features are standardised by the reference (mean, std; a constant feature keeps scale 1), and the covariance is
shrunk towards a scaled identity, (1 - s) S + s (trace(S) / d) I, with s from the Ledoit-Wolf formula
(the same as scikit-learn's `ledoit_wolf`) or given. This keeps the inverse stable when features are many,
collinear or constant.

Threshold, so that the false-positive rate holds on new data: scores of reference rows under a covariance fitted
on those same rows are too small (the fit has seen them), so an in-sample quantile would flag more than `fpr`
of fresh data. The threshold is instead the (1 - fpr) quantile of cross-fitted scores: the reference is split into
K folds (K = 5, or one row per fold for tiny references), each fold is scored by a model fitted on the other
folds, and the final model is then fitted on all rows. Held-out scores come from slightly smaller fits than the
final one, which errs on the side of fewer false alarms. The quantile is a conformal rank (see
`conformal_threshold`), so the target holds for small references too.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import linalg

from sidecar.detectors.two_sample import FloatArray, as_matrix

FOLDS = 5
SHRINKAGE_METHODS = ("ledoit-wolf",)


class MahalanobisOutlier:
    def __init__(self, reference: npt.ArrayLike, fpr: float = 0.01, shrinkage: float | str = "ledoit-wolf") -> None:
        """`shrinkage`: "ledoit-wolf" or a fixed intensity in [0, 1] (0 = plain covariance, 1 = scaled identity).

        Reference rows with a NaN or infinite value are left out; at least 3 finite rows are needed.
        """
        ref = as_matrix(reference)
        ref = ref[np.isfinite(ref).all(axis=1)]
        if ref.shape[0] < 3:
            raise ValueError(f"Mahalanobis outlier detection needs 3 finite reference rows, got {ref.shape[0]}")
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        if isinstance(shrinkage, str):
            if shrinkage not in SHRINKAGE_METHODS:
                raise ValueError(f"shrinkage must be one of {SHRINKAGE_METHODS} or a number, got {shrinkage!r}")
        elif not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.fpr = fpr
        self.shrinkage_setting = shrinkage
        self.features = ref.shape[1]
        self.threshold = conformal_threshold(self._held_out_scores(ref), fpr)
        self._model = _Model.fit(ref, shrinkage)
        self.shrinkage = self._model.shrinkage

    def score(self, x: npt.ArrayLike) -> FloatArray:
        """Mahalanobis distance of each row; NaN for rows with a NaN or infinite value."""
        rows = as_matrix(x)
        if rows.shape[1] != self.features:
            raise ValueError(f"rows have {rows.shape[1]} features, the reference has {self.features}")
        return self._model.score(rows)

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True for rows scoring above the threshold (rows with non-finite values are never flagged)."""
        with np.errstate(invalid="ignore"):
            return self.score(x) > self.threshold  # type: ignore[no-any-return]

    def _held_out_scores(self, ref: FloatArray) -> FloatArray:
        n = ref.shape[0]
        folds = min(FOLDS, n) if n >= 2 * FOLDS else n
        assignment = np.random.default_rng(0).permutation(n) % folds
        scores = np.empty(n)
        for fold in range(folds):
            held_out = assignment == fold
            scores[held_out] = _Model.fit(ref[~held_out], self.shrinkage_setting).score(ref[held_out])
        return scores


def conformal_threshold(scores: FloatArray, fpr: float) -> float:
    """The ceil((n + 1)(1 - fpr))-th smallest score: a fresh score from the same distribution exceeds it with
    probability at most `fpr` (split-conformal rank; plain `np.quantile` would give about fpr + 1/n). With too few
    scores for that rank, the largest score."""
    finite = np.sort(scores[np.isfinite(scores)])
    if finite.size == 0:
        raise ValueError("no finite scores to set a threshold from")
    rank = int(np.ceil((finite.size + 1) * (1.0 - fpr)))
    return float(finite[min(rank, finite.size) - 1])


class _Model:
    def __init__(self, mean: FloatArray, scale: FloatArray, whitening: FloatArray, shrinkage: float) -> None:
        self.mean = mean
        self.scale = scale
        self.whitening = whitening  # W with W'W = covariance^-1, so distance = ||W (x - mean) / scale||
        self.shrinkage = shrinkage

    @classmethod
    def fit(cls, x: FloatArray, shrinkage: float | str) -> _Model:
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        intensity = ledoit_wolf_shrinkage(z) if isinstance(shrinkage, str) else float(shrinkage)
        covariance = z.T @ z / z.shape[0]
        target = np.trace(covariance) / covariance.shape[0]
        if target <= 0:  # every feature constant
            target = 1.0
            intensity = 1.0
        shrunk = (1.0 - intensity) * covariance + intensity * target * np.eye(covariance.shape[0])
        cholesky = _cholesky(shrunk, target)
        whitening = linalg.solve_triangular(cholesky, np.eye(cholesky.shape[0]), lower=True)
        return cls(mean, scale, whitening, intensity)

    def score(self, x: FloatArray) -> FloatArray:
        finite = np.asarray(np.isfinite(x).all(axis=1), dtype=bool)
        z = (np.where(finite[:, None], x, self.mean) - self.mean) / self.scale
        distances = np.sqrt(((z @ self.whitening.T) ** 2).sum(axis=1))
        distances[~finite] = np.nan
        return distances  # type: ignore[no-any-return]


def _cholesky(matrix: FloatArray, target: float) -> FloatArray:
    """Lower Cholesky factor; a tiny ridge is added if rounding left the matrix not positive definite."""
    ridge = 0.0
    for _ in range(8):
        try:
            return linalg.cholesky(matrix + ridge * np.eye(matrix.shape[0]), lower=True)  # type: ignore[no-any-return]
        except linalg.LinAlgError:
            ridge = max(ridge * 100.0, 1e-10 * target)
    raise ValueError("covariance is not positive definite even with a ridge")


def ledoit_wolf_shrinkage(x: FloatArray) -> float:
    """Ledoit-Wolf (2004) shrinkage intensity for data `x` (rows = samples), centred here; as scikit-learn."""
    n, d = x.shape
    if d == 1:
        return 0.0
    centred = x - x.mean(axis=0)
    squared = centred**2
    variances = squared.sum(axis=0) / n
    mu = variances.sum() / d
    delta_ = float(((centred.T @ centred) ** 2).sum()) / n**2
    beta_ = float((squared.T @ squared).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * variances.sum() + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)
