"""Feature-wise two-sample tests and effect sizes, vectorised across features.

Every function compares a reference sample with a current sample column by column (one column = one feature),
with array operations over many features at once, never a test run feature by feature. The p-values equal
SciPy's (`scipy.stats.ks_2samp`, `cramervonmises_2samp`, `chi2_contingency(correction=False)`) to about 1e-12,
including SciPy's choice between exact and asymptotic distributions. (Exact KS p-values for unequal sample sizes
come from SciPy's compiled lattice-path kernel, called once per distinct statistic value; it costs about
0.1-10 ms per call at sizes of 1000-10000, as inside SciPy.)

The numeric tests share one step: `pool_columns` merges each sorted reference column with the sorted current
column (a linear merge of two sorted runs) and keeps, per position of the pooled order, how many reference values
lie at or before it. The KS statistic, the Cramér-von Mises statistic and the Wasserstein distance are then all
read off the same pooled arrays. NaN values are dropped per feature (they sort last and are excluded by count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special, stats

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
CountArray = npt.NDArray[np.int32]  # int32 cumulative sums vectorise (SIMD); int64 ones are ~20x slower
BoolArray = npt.NDArray[np.bool_]

NUMERIC_TESTS = ("ks", "cvm")
KS_METHODS = ("auto", "exact", "asymp")
CVM_METHODS = ("auto", "exact", "asymptotic")
_KS_MAX_AUTO_EXACT = 10_000  # scipy.stats.ks_2samp: method="auto" is exact when both samples are this small
_CVM_MAX_AUTO_EXACT = 20  # scipy.stats.cramervonmises_2samp: "auto" is exact when both samples are this small
_INT32_MAX = float(np.iinfo(np.int32).max)
BLOCK_VALUES = 16_384  # pooled values per block of features (see `compare_columns`)


@dataclass(frozen=True)
class SortedColumns:
    """Columns sorted ascending in feature-major layout: `values[f]` is feature f, NaN values last."""

    values: FloatArray  # (d, n)
    counts: IntArray  # (d,) non-NaN values per feature

    @classmethod
    def from_rows(cls, x: npt.ArrayLike) -> SortedColumns:
        """Sort a row-major sample (n, d); NaN counts as missing."""
        columns = np.ascontiguousarray(as_matrix(x).T)
        columns.sort(axis=1)
        counts = columns.shape[1] - np.isnan(columns).sum(axis=1)
        return cls(columns, counts.astype(np.int64))

    @property
    def features(self) -> int:
        return int(self.values.shape[0])

    def block(self, features: slice) -> SortedColumns:
        return SortedColumns(self.values[features], self.counts[features])


@dataclass(frozen=True)
class PooledColumns:
    """Reference and current columns merged into one ascending order per feature."""

    values: FloatArray  # (d, N) pooled values, ascending, NaN last
    ref_cum: CountArray  # (d, N) reference values at or before each position
    n_ref: IntArray  # (d,)
    n_cur: IntArray  # (d,)
    valid: BoolArray  # (d, N) position holds a non-NaN value
    group_end: BoolArray  # (d, N) valid position whose next value differs (last of a run of ties)

    @property
    def cur_cum(self) -> CountArray:
        positions = np.arange(1, self.values.shape[1] + 1, dtype=np.int32)
        return positions[None, :] - self.ref_cum

    @cached_property
    def from_ref(self) -> BoolArray:
        """Position holds a reference value (else a current value or NaN)."""
        from_ref = np.empty(self.valid.shape, dtype=bool)
        from_ref[:, 0] = self.ref_cum[:, 0] == 1
        from_ref[:, 1:] = np.diff(self.ref_cum, axis=1) == 1
        return from_ref

    @cached_property
    def ecdf_difference(self) -> FloatArray:
        """F_ref(x) - F_cur(x) at each pooled position (NaN where a side has no values); shared by the tests."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.ref_cum / self.n_ref[:, None] - self.cur_cum / self.n_cur[:, None]  # type: ignore[no-any-return]





def as_matrix(x: npt.ArrayLike) -> FloatArray:
    """A float64 sample of shape (n, d); a 1-D input is one feature."""
    array = np.asarray(x, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D sample (rows, features), got shape {array.shape}")
    return array


def pool_columns(reference: SortedColumns, current: SortedColumns) -> PooledColumns:
    """Merge sorted reference and current columns per feature (stable merge of two sorted runs)."""
    if reference.features != current.features:
        raise ValueError(f"reference has {reference.features} features, current has {current.features}")
    n = reference.values.shape[1]
    both = np.concatenate([reference.values, current.values], axis=1)
    order = np.argsort(both, axis=1, kind="stable")  # timsort: linear for two sorted runs
    values = np.take_along_axis(both, order, axis=1)
    ref_cum = np.cumsum(order < n, axis=1, dtype=np.int32)
    total = reference.counts + current.counts
    valid = np.arange(both.shape[1])[None, :] < total[:, None]
    next_differs = np.ones_like(valid)
    next_differs[:, :-1] = values[:, 1:] != values[:, :-1]
    return PooledColumns(values, ref_cum, reference.counts, current.counts, valid, valid & next_differs)


@dataclass(frozen=True)
class Comparison:
    """Per-feature results of a numeric test; `effect` is the normalised Wasserstein distance when asked for."""

    statistic: FloatArray
    p_value: FloatArray
    effect: FloatArray | None


def compare_columns(reference: SortedColumns, current: SortedColumns, *, test: str = "ks", method: str = "auto",
                    ref_std: FloatArray | None = None) -> Comparison:
    """Run `test` ("ks" or "cvm") per feature, plus Wasserstein / `ref_std` when `ref_std` is given.

    Features are processed in blocks of about `BLOCK_VALUES` pooled values: the temporaries then stay in the CPU
    cache and in the allocator's heap (whole-window temporaries of a few MB are returned to the OS and
    page-faulted back on every call, which costs more than the arithmetic).
    """
    if test not in NUMERIC_TESTS:
        raise ValueError(f"test must be one of {NUMERIC_TESTS}, got {test!r}")
    methods = KS_METHODS if test == "ks" else CVM_METHODS
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got {method!r}")
    if reference.features != current.features:
        raise ValueError(f"reference has {reference.features} features, current has {current.features}")
    statistic = np.full(reference.features, np.nan)
    p_value = np.full(reference.features, np.nan)
    effect = None if ref_std is None else np.full(reference.features, np.nan)
    width = reference.values.shape[1] + current.values.shape[1]
    step = max(1, BLOCK_VALUES // max(width, 1))
    for start in range(0, reference.features, step):
        block = slice(start, start + step)
        pooled = pool_columns(reference.block(block), current.block(block))
        run = ks_from_pooled if test == "ks" else cvm_from_pooled
        statistic[block], p_value[block] = run(pooled, method=method)
        if effect is not None and ref_std is not None:
            effect[block] = wasserstein_from_pooled(pooled, ref_std[block])
    return Comparison(statistic, p_value, effect)


# ----------------------------------------------------------------------------------------- Kolmogorov-Smirnov


def ks_2samp(ref: npt.ArrayLike, cur: npt.ArrayLike, *, method: str = "auto") -> tuple[FloatArray, FloatArray]:
    """Two-sided two-sample KS test per feature: (statistic (d,), p-value (d,)), as `scipy.stats.ks_2samp`.

    A feature without values on one side gets NaN for both.
    """
    comparison = compare_columns(SortedColumns.from_rows(ref), SortedColumns.from_rows(cur), method=method)
    return comparison.statistic, comparison.p_value


def ks_from_pooled(pooled: PooledColumns, *, method: str = "auto") -> tuple[FloatArray, FloatArray]:
    if method not in KS_METHODS:
        raise ValueError(f"method must be one of {KS_METHODS}, got {method!r}")
    difference, ends = pooled.ecdf_difference, pooled.group_end
    above = np.max(difference, axis=1, where=ends, initial=0.0)  # as SciPy: the larger of max and -min
    below = -np.min(difference, axis=1, where=ends, initial=0.0)
    statistic = np.maximum(above, below)
    p_value = np.full(statistic.shape, np.nan)
    testable = (pooled.n_ref > 0) & (pooled.n_cur > 0)
    statistic[~testable] = np.nan
    for n1, n2 in _size_pairs(pooled.n_ref, pooled.n_cur, testable):
        group = testable & (pooled.n_ref == n1) & (pooled.n_cur == n2)
        statistic[group], p_value[group] = _ks_p_values(statistic[group], n1, n2, method)
    return statistic, p_value


def _size_pairs(n_ref: IntArray, n_cur: IntArray, mask: BoolArray) -> list[tuple[int, int]]:
    """Distinct (n_ref, n_cur) pairs among the masked features (one pair unless NaN counts differ)."""
    if not mask.any():
        return []
    refs, curs = n_ref[mask], n_cur[mask]
    if (refs == refs[0]).all() and (curs == curs[0]).all():
        return [(int(refs[0]), int(curs[0]))]
    pairs = np.unique(np.stack([refs, curs], axis=1), axis=0)
    return [(int(a), int(b)) for a, b in pairs]


def _ks_p_values(d: FloatArray, n1: int, n2: int, method: str) -> tuple[FloatArray, FloatArray]:
    """SciPy's decision tree for one pair of sample sizes; returns the (possibly lattice-rounded) statistic."""
    g = math.gcd(n1, n2)
    if method == "auto":
        method = "exact" if max(n1, n2) <= _KS_MAX_AUTO_EXACT else "asymp"
    elif method == "exact" and n1 // g >= _INT32_MAX / (n2 // g):
        method = "asymp"
    if method == "asymp":
        return d, _ks_asymptotic(d, n1, n2)
    lcm = (n1 // g) * n2
    h = np.round(d * lcm).astype(np.int64)
    d = h / lcm
    p = _ks_exact(n1, n2, g, h)
    failed = ~((p >= 0.0) & (p <= 1.0))  # SciPy falls back to the asymptotic value when exact is out of range
    if failed.any():
        p[failed] = _ks_asymptotic(d[failed], n1, n2)
    return d, p


def _ks_asymptotic(d: FloatArray, n1: int, n2: int) -> FloatArray:
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    return np.clip(stats.kstwo.sf(d, np.round(en)), 0.0, 1.0)  # type: ignore[no-any-return]


def _ks_exact(n1: int, n2: int, g: int, h: IntArray) -> FloatArray:
    """Exact P(D >= h / lcm(n1, n2)) for each h."""
    p = np.ones(h.shape, dtype=np.float64)
    positive = h > 0
    if not positive.any():
        return p
    if n1 == n2:
        p[positive] = _prob_outside_square(n1, h[positive])
    else:
        kernel = _outer_prob_inside_kernel()
        for value in np.unique(h[positive]):  # one call per distinct statistic value, not per feature
            p[h == value] = kernel(n1, n2, g, int(value))
    return p


def _prob_outside_square(n: int, h: IntArray) -> FloatArray:
    """P(D_{n,n} >= h/n) = 2 * sum_{k>=1} (-1)^(k-1) C(2n, n-kh) / C(2n, n), vectorised over h.

    The ratio C(2n, n-t) / C(2n, n) = prod_{j=1..t} (n+1-j)/(n+j) is read from a cached cumulative log table, so
    all features cost sum_f n/h_f terms with no Python loop. SciPy evaluates the same alternating series in
    Horner form; the two agree to ~1e-13.
    """
    log_ratio = _log_binomial_ratio(n)
    terms = n // h  # k = 1 .. floor(n/h) (the next term is exactly zero)
    owner = np.repeat(np.arange(h.size), terms)
    starts = np.cumsum(terms) - terms
    k = np.arange(owner.size) - np.repeat(starts, terms) + 1
    sign = np.where(k % 2 == 1, 1.0, -1.0)
    series = np.bincount(owner, weights=sign * np.exp(log_ratio[k * h[owner]]), minlength=h.size)
    return 2.0 * series.astype(np.float64)


@lru_cache(maxsize=8)
def _log_binomial_ratio(n: int) -> FloatArray:
    """log(C(2n, n-t) / C(2n, n)) for t = 0..n."""
    j = np.arange(1, n + 1, dtype=np.float64)
    table = np.zeros(n + 1)
    np.cumsum(np.log((n + 1.0 - j) / (n + j)), out=table[1:])
    table.setflags(write=False)
    return table


def _outer_prob_inside_kernel() -> Any:
    """SciPy's compiled exact kernel for unequal sizes; a pure-Python port of it when SciPy lacks it."""
    try:
        from scipy.stats._stats_pythran import _compute_outer_prob_inside_method
    except ImportError:  # pragma: no cover - every supported SciPy ships it
        return outer_prob_inside
    return _compute_outer_prob_inside_method


def outer_prob_inside(m: int, n: int, g: int, h: int) -> float:
    """Probability that a lattice path from (0,0) to (m,n) leaves the band |x/m - y/n| < h/lcm(m,n).

    The exact two-sided KS p-value for unequal sizes (Hodges 1958, in Viehmann's stable form for 1 - p, as
    SciPy). Used only when SciPy's compiled version is unavailable.
    """
    if m < n:
        m, n = n, m
    mg, ng = m // g, n // g
    minj, maxj = 0, min(math.ceil(h / mg), n + 1)
    curlen = maxj - minj
    column = np.ones(min(2 * maxj + 2, n + 1))
    column[minj:maxj] = 0.0
    for i in range(1, m + 1):
        lastminj, lastlen = minj, curlen
        minj = min(max(math.floor((ng * i - h) / mg) + 1, 0), n)
        maxj = min(math.ceil((ng * i + h) / mg), n + 1)
        if maxj <= minj:
            return 1.0
        val = 0.0 if minj == 0 else 1.0
        for jj in range(maxj - minj):
            j = jj + minj
            val = (column[jj + minj - lastminj] * i + val * j) / (i + j)
            column[jj] = val
        curlen = maxj - minj
        if lastlen > curlen:
            column[maxj - minj:maxj - minj + (lastlen - curlen)] = 1.0
    return float(column[maxj - minj - 1])


# ------------------------------------------------------------------------------------------- Cramér-von Mises


def cramervonmises_2samp(ref: npt.ArrayLike, cur: npt.ArrayLike, *,
                         method: str = "auto") -> tuple[FloatArray, FloatArray]:
    """Two-sample Cramér-von Mises test per feature, as `scipy.stats.cramervonmises_2samp` (statistic T).

    SciPy's "auto": exact when both samples have at most 20 values, asymptotic otherwise. Features with fewer
    than two values on a side get NaN.
    """
    comparison = compare_columns(SortedColumns.from_rows(ref), SortedColumns.from_rows(cur), test="cvm",
                                 method=method)
    return comparison.statistic, comparison.p_value


def cvm_from_pooled(pooled: PooledColumns, *, method: str = "auto") -> tuple[FloatArray, FloatArray]:
    if method not in CVM_METHODS:
        raise ValueError(f"method must be one of {CVM_METHODS}, got {method!r}")
    n1 = pooled.n_ref.astype(np.float64)
    n2 = pooled.n_cur.astype(np.float64)
    u = _cvm_u(pooled, n1, n2)
    k, total = n1 * n2, n1 + n2
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = u / (k * total) - (4.0 * k - 1.0) / (6.0 * total)
    testable = (pooled.n_ref > 1) & (pooled.n_cur > 1)
    statistic[~testable] = np.nan
    p_value = np.full(statistic.shape, np.nan)
    small = np.maximum(pooled.n_ref, pooled.n_cur) <= _CVM_MAX_AUTO_EXACT
    exact = testable & (small if method == "auto" else np.full_like(small, method == "exact"))
    asymptotic = testable & ~exact
    if asymptotic.any():
        p_value[asymptotic] = _cvm_asymptotic(statistic[asymptotic], total[asymptotic], n1[asymptotic],
                                              n2[asymptotic])
    for a, b in _size_pairs(pooled.n_ref, pooled.n_cur, exact):
        group = exact & (pooled.n_ref == a) & (pooled.n_cur == b)
        p_value[group] = _cvm_exact(pooled, group, a, b)
    return statistic, p_value


def _cvm_u(pooled: PooledColumns, n1: FloatArray, n2: FloatArray) -> FloatArray:
    """U = n1 * sum_i (r(x_i) - i)^2 + n2 * sum_j (r(y_j) - j)^2 with mid-ranks for ties."""
    width = pooled.values.shape[1]
    positions = np.arange(width, dtype=np.int64)
    group_start = pooled.valid.copy()
    group_start[:, 1:] &= pooled.values[:, 1:] != pooled.values[:, :-1]
    first = np.maximum.accumulate(np.where(group_start, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(pooled.group_end, positions, width)[:, ::-1], axis=1)[:, ::-1]
    mid_rank = (first + last) / 2.0 + 1.0
    from_ref = pooled.from_ref
    ref_terms = np.where(pooled.valid & from_ref, (mid_rank - pooled.ref_cum) ** 2, 0.0).sum(axis=1)
    cur_terms = np.where(pooled.valid & ~from_ref, (mid_rank - pooled.cur_cum) ** 2, 0.0).sum(axis=1)
    return n1 * ref_terms + n2 * cur_terms  # type: ignore[no-any-return]


def _cvm_asymptotic(t: FloatArray, total: FloatArray, n1: FloatArray, n2: FloatArray) -> FloatArray:
    """Anderson (1962) normalisation, then the limiting one-sample CvM distribution (as SciPy)."""
    k = n1 * n2
    expected = (1.0 + 1.0 / total) / 6.0
    variance = (total + 1.0) * (4.0 * k * total - 3.0 * (n1**2 + n2**2) - 2.0 * k) / (45.0 * total**2 * 4.0 * k)
    tn = 1.0 / 6.0 + (t - expected) / np.sqrt(45.0 * variance)
    p = np.ones_like(tn)
    inside = tn >= 0.003  # below, 1 - cdf differs from 1 by < 1.3e-18
    p[inside] = np.clip(1.0 - _cdf_cvm_inf(tn[inside]), 0.0, None)
    return p


def _cdf_cvm_inf(x: FloatArray) -> FloatArray:
    """Limiting CDF of the CvM statistic (Csörgő & Faraway 1996, eq. 1.2); series until terms < 1e-7."""
    total = np.zeros_like(x)
    active = np.ones(x.shape, dtype=bool)
    k = 0
    while active.any():
        xa = x[active]
        y = 4 * k + 1
        q = y**2 / (16.0 * xa)
        term = (math.exp(special.gammaln(k + 0.5) - special.gammaln(k + 1)) / (np.pi**1.5 * np.sqrt(xa))
                * math.sqrt(y) * np.exp(-q) * special.kv(0.25, q))
        total[active] += term
        active[active] = np.abs(term) >= 1e-7
        k += 1
    return total


def _cvm_exact(pooled: PooledColumns, group: BoolArray, n1: int, n2: int) -> FloatArray:
    """Exact p-values for tiny samples via SciPy's enumeration, one vectorised call per pair of sizes."""
    values, from_ref, valid = pooled.values[group], pooled.from_ref[group], pooled.valid[group]
    x = values[valid & from_ref].reshape(-1, n1)
    y = values[valid & ~from_ref].reshape(-1, n2)
    result = stats.cramervonmises_2samp(x, y, method="exact", axis=1)
    return np.atleast_1d(np.asarray(result.pvalue, dtype=np.float64))


# ------------------------------------------------------------------------------------------------ categorical


def chi2_categorical(ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Chi-squared test of a 2 x k contingency table per feature (rows reference/current, no Yates correction).

    Counts are (d, k) over the union of categories, zero-padded; a category absent from both samples is ignored.
    One category left: statistic 0, p 1 (as SciPy). A feature with no counts on one side: NaN.
    """
    observed = np.stack([_counts(ref_counts), _counts(cur_counts)], axis=1)  # (d, 2, k)
    column = observed.sum(axis=1)  # (d, k)
    row = observed.sum(axis=2)  # (d, 2)
    n = row.sum(axis=1)
    present = column > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = row[:, :, None] * column[:, None, :] / n[:, None, None]
        terms = np.where(present[:, None, :], (observed - expected) ** 2 / expected, 0.0)
    statistic = terms.sum(axis=(1, 2))
    dof = present.sum(axis=1) - 1
    p_value = np.ones_like(statistic)
    testable = dof > 0
    p_value[testable] = stats.chi2.sf(statistic[testable], dof[testable])
    statistic[~testable] = 0.0
    empty = (row == 0).any(axis=1)
    statistic[empty] = np.nan
    p_value[empty] = np.nan
    return statistic, p_value


def jensen_shannon(ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike) -> FloatArray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between category distributions; NaN for an empty side."""
    p = _frequencies(_counts(ref_counts))
    q = _frequencies(_counts(cur_counts))
    m = (p + q) / 2.0
    divergence = (special.rel_entr(p, m).sum(axis=1) + special.rel_entr(q, m).sum(axis=1)) / 2.0
    return np.sqrt(np.maximum(divergence, 0.0) / math.log(2.0))  # type: ignore[no-any-return]


def _counts(counts: npt.ArrayLike) -> FloatArray:
    array = np.asarray(counts, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"expected category counts of shape (features, categories), got {array.shape}")
    if (array < 0).any():
        raise ValueError("category counts must be non-negative")
    return array


def _frequencies(counts: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return counts / counts.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------- effect size


def wasserstein_normalised(ref: npt.ArrayLike, cur: npt.ArrayLike) -> FloatArray:
    """Wasserstein-1 distance per feature divided by the reference standard deviation (ddof 0).

    A constant reference column gives 0; a side without values gives NaN. As `scipy.stats.wasserstein_distance`.
    """
    reference = SortedColumns.from_rows(ref)
    comparison = compare_columns(reference, SortedColumns.from_rows(cur), ref_std=column_std(reference))
    assert comparison.effect is not None
    return comparison.effect


def wasserstein_from_pooled(pooled: PooledColumns, ref_std: FloatArray) -> FloatArray:
    """Integral of |F_ref - F_cur| over the pooled values, divided by `ref_std` (0 where `ref_std` is 0)."""
    with np.errstate(invalid="ignore"):
        widths = np.diff(pooled.values, axis=1)
    widths[~pooled.valid[:, 1:]] = 0.0  # a gap needs values at both ends
    distance = np.einsum("ij,ij->i", np.abs(pooled.ecdf_difference[:, :-1]), widths)
    distance[(pooled.n_ref == 0) | (pooled.n_cur == 0)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ref_std > 0, distance / ref_std, np.where(np.isnan(distance), np.nan, 0.0))


def column_moments(columns: SortedColumns) -> tuple[FloatArray, FloatArray]:
    """Mean and population standard deviation per feature, NaN ignored (NaN when a feature has no values)."""
    values, counts = columns.values, columns.counts
    with np.errstate(invalid="ignore", divide="ignore"):
        if (counts == values.shape[1]).all():
            mean = values.mean(axis=1)
            centred = values - mean[:, None]
        else:
            mean = np.nansum(values, axis=1) / counts
            centred = np.where(np.isnan(values), 0.0, values - mean[:, None])
        return mean, np.sqrt(np.einsum("ij,ij->i", centred, centred) / counts)


def column_std(columns: SortedColumns) -> FloatArray:
    return column_moments(columns)[1]
