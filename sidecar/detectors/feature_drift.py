"""Drift results and the feature-wise drift detector, which owns the decision (as in alibi-detect).

The detector runs one test per feature (KS or Cramér-von Mises for numeric columns, chi-squared for categorical
ones), corrects the p-values for the number of features, and decides at level `alpha`. Non-finite values
(NaN, +/-inf) are left out of the tests and summaries; `sidecar.detectors.quality` counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from sidecar.detectors import two_sample as drift
from sidecar.detectors.correction import correct
from sidecar.detectors.summaries import OTHER
from sidecar.detectors.two_sample import NUMERIC_TESTS, FloatArray, IntArray, SortedColumns

FeatureKind = Literal["numeric", "categorical"]
OTHER_CATEGORY = OTHER
TOP_CATEGORIES = 5
SUMMARY_KEYS = frozenset(("count", "mean", "std", "min", "max", "p05", "p50", "p95"))


@dataclass
class FeatureResult:
    """One feature's test. A NaN statistic marks a feature that could not be tested (too few values on a side);
    its p-value is then 1.

    `reference` / `current` summarise the two samples: count, mean, std, min, max, p05, p50, p95 for numeric features;
    count and the frequencies of the most common categories (at most 5, plus "__other__" for values outside
    the known categories) for categorical ones. A category is named by its number, or by its name when the detector
    was given its column's names (coded strings); categories of one name are counted together, and a name that is
    also a summary key (`count`, `min`, ...) is quoted (`'count'`) so that no key means two things.
    """

    name: str
    statistic: float
    p_value: float
    adjusted_p_value: float
    effect_size: float  # numeric: Wasserstein-1 / reference std; categorical: Jensen-Shannon distance (base 2)
    drift: bool
    kind: FeatureKind
    reference: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)


@dataclass
class DriftResult:
    """A detector's verdict on one window: drift when `p_value < threshold`.

    Feature-wise detectors report the smallest adjusted p-value and alpha as the threshold; MMD reports the
    permutation p-value and alpha, and MMD^2 as `distance`.
    """

    detector: str
    drift: bool
    p_value: float
    threshold: float
    features: list[FeatureResult]
    distance: float | None


class FeatureDriftDetector:
    """Tests every feature of a window against the reference, then corrects for the number of features."""

    def __init__(self, reference: npt.ArrayLike, names: list[str], categorical: dict[int, np.ndarray] | None = None,
                 test: str = "ks", correction: str = "bh", alpha: float = 0.05,
                 detector_name: str = "feature_drift",
                 category_names: Mapping[int, Sequence[str]] | None = None) -> None:
        """`categorical`: per categorical column its known categories; `category_names`: per coded categorical
        column the name of each code (`names[code]`), which the summaries show instead of the number."""
        ref = drift.as_matrix(reference)
        features = ref.shape[1]
        if len(names) != features:
            raise ValueError(f"{len(names)} names for {features} features")
        if test not in NUMERIC_TESTS:
            raise ValueError(f"test must be one of {NUMERIC_TESTS}, got {test!r}")
        correct(np.ones(1), correction, alpha)  # validates correction and alpha
        categories = dict(categorical or {})
        for index in categories:
            if not 0 <= index < features:
                raise ValueError(f"categorical column {index} is outside 0..{features - 1}")
        self.names = list(names)
        self.test_name = test
        self.correction = correction
        self.alpha = alpha
        self.detector_name = detector_name
        self.features = features
        self._numeric = np.array([i for i in range(features) if i not in categories], dtype=np.int64)
        self._categorical = np.array(sorted(categories), dtype=np.int64)
        self._categories = [np.unique(np.asarray(categories[int(i)], dtype=np.float64)) for i in self._categorical]
        named = category_names or {}
        self._labels = [[_category_label(value, named.get(int(i))) for value in known.tolist()]
                        for i, known in zip(self._categorical, self._categories, strict=True)]
        self._slots: list[tuple[FeatureKind, int]] = [("numeric", 0)] * features
        for slot, index in enumerate(self._numeric):
            self._slots[index] = ("numeric", slot)
        for slot, index in enumerate(self._categorical):
            self._slots[index] = ("categorical", slot)
        self._ref_sorted = SortedColumns.from_rows(_finite(ref[:, self._numeric]))
        self._ref_std = drift.column_std(self._ref_sorted)
        self._ref_numeric_summary = _numeric_summaries(self._ref_sorted)
        self._ref_counts = self._count_categories(ref)
        self._ref_categorical_summary = self._categorical_summaries(self._ref_counts)

    @property
    def reference_min(self) -> FloatArray:
        """Smallest finite reference value per feature (NaN for categorical or empty columns)."""
        return self._reference_bound(first=True)

    @property
    def reference_max(self) -> FloatArray:
        return self._reference_bound(first=False)

    def test(self, current: npt.ArrayLike) -> DriftResult:
        cur = drift.as_matrix(current)
        if cur.shape[1] != self.features:
            raise ValueError(f"window has {cur.shape[1]} features, the reference has {self.features}")
        statistic = np.full(self.features, np.nan)
        p_value = np.ones(self.features)
        effect = np.full(self.features, np.nan)
        summaries: list[dict[str, float]] = [{} for _ in range(self.features)]
        if self._numeric.size:
            numeric = cur if self._numeric.size == self.features else cur[:, self._numeric]
            cur_sorted = SortedColumns.from_rows(_finite(numeric))
            comparison = drift.compare_columns(self._ref_sorted, cur_sorted, test=self.test_name,
                                               ref_std=self._ref_std)
            statistic[self._numeric] = comparison.statistic
            p_value[self._numeric] = np.nan_to_num(comparison.p_value, nan=1.0)
            effect[self._numeric] = comparison.effect
            for index, summary in zip(self._numeric, _numeric_summaries(cur_sorted), strict=True):
                summaries[index] = summary
        if self._categorical.size:
            counts = self._count_categories(cur)
            stat, p = drift.chi2_categorical(self._ref_counts, counts)
            statistic[self._categorical] = stat
            p_value[self._categorical] = np.nan_to_num(p, nan=1.0)
            effect[self._categorical] = drift.jensen_shannon(self._ref_counts, counts)
            for index, summary in zip(self._categorical, self._categorical_summaries(counts), strict=True):
                summaries[index] = summary
        decision = correct(p_value, self.correction, self.alpha)
        return DriftResult(
            detector=self.detector_name,
            drift=decision.drift,
            p_value=float(decision.adjusted.min()) if self.features else 1.0,
            threshold=self.alpha,
            features=[self._feature(i, statistic, p_value, decision.adjusted, effect, decision.rejected, summaries)
                      for i in range(self.features)],
            distance=None,
        )

    def _feature(self, index: int, statistic: FloatArray, p_value: FloatArray, adjusted: FloatArray,
                 effect: FloatArray, rejected: npt.NDArray[np.bool_],
                 summaries: list[dict[str, float]]) -> FeatureResult:
        kind, slot = self._slots[index]
        reference = (self._ref_categorical_summary if kind == "categorical" else self._ref_numeric_summary)[slot]
        return FeatureResult(
            name=self.names[index], statistic=float(statistic[index]), p_value=float(p_value[index]),
            adjusted_p_value=float(adjusted[index]), effect_size=float(effect[index]), drift=bool(rejected[index]),
            kind=kind, reference=dict(reference), current=summaries[index])

    def _count_categories(self, x: FloatArray) -> FloatArray:
        """(categorical features, known categories + 1) counts; the last column counts unknown values."""
        width = max((len(c) for c in self._categories), default=0) + 1
        counts = np.zeros((len(self._categories), width))
        for row, (column, known) in enumerate(zip(self._categorical, self._categories, strict=True)):
            values = x[:, column]
            values = values[~np.isnan(values)]
            if len(known) == 0:
                counts[row, -1] = values.size
                continue
            slot = np.minimum(np.searchsorted(known, values), len(known) - 1)
            matched = known[slot] == values
            counts[row, :len(known)] = np.bincount(slot[matched], minlength=len(known))
            counts[row, -1] = np.count_nonzero(~matched)
        return counts

    def _categorical_summaries(self, counts: FloatArray) -> list[dict[str, float]]:
        summaries = []
        for row, known, labels in zip(counts, self._categories, self._labels, strict=True):
            total = float(row.sum())
            summary: dict[str, float] = {"count": total}
            frequencies = row[:len(known)] / total if total else np.zeros(len(known))
            for slot in np.argsort(-row[:len(known)], kind="stable")[:TOP_CATEGORIES]:
                if row[slot] > 0:
                    summary[labels[slot]] = summary.get(labels[slot], 0.0) + float(frequencies[slot])
            if row[-1] > 0:
                summary[OTHER_CATEGORY] = summary.get(OTHER_CATEGORY, 0.0) + float(row[-1] / total)
            summaries.append(summary)
        return summaries

    def _reference_bound(self, first: bool) -> FloatArray:
        bound = np.full(self.features, np.nan)
        sorted_ = self._ref_sorted
        has_values = sorted_.counts > 0
        position = np.zeros_like(sorted_.counts) if first else np.maximum(sorted_.counts - 1, 0)
        if sorted_.values.shape[1]:
            picked = np.take_along_axis(sorted_.values, position[:, None], axis=1)[:, 0]
            bound[self._numeric] = np.where(has_values, picked, np.nan)
        return bound


def _finite(x: FloatArray) -> FloatArray:
    finite = np.isfinite(x)
    return x if finite.all() else np.where(finite, x, np.nan)


def _numeric_summaries(columns: SortedColumns) -> list[dict[str, float]]:
    """count, mean, std (ddof 0), min, max and the 5th, 50th and 95th percentiles (lower nearest rank, the median
    interpolated) per feature, from already sorted columns."""
    counts: IntArray = columns.counts
    values = columns.values
    features = values.shape[0]
    if values.shape[1] == 0:
        return [{"count": 0.0} for _ in range(features)]
    mean, std = drift.column_moments(columns)
    last = np.maximum(counts - 1, 0)
    low, high = (last // 2)[:, None], ((last + 1) // 2)[:, None]
    median = (np.take_along_axis(values, low, axis=1)[:, 0] + np.take_along_axis(values, high, axis=1)[:, 0]) / 2
    maximum = np.take_along_axis(values, last[:, None], axis=1)[:, 0]
    p05 = np.take_along_axis(values, np.floor(0.05 * last).astype(np.int64)[:, None], axis=1)[:, 0]
    p95 = np.take_along_axis(values, np.ceil(0.95 * last).astype(np.int64)[:, None], axis=1)[:, 0]
    summaries = []
    for f in range(features):
        if counts[f] == 0:
            summaries.append({"count": 0.0})
            continue
        summaries.append({"count": float(counts[f]), "mean": float(mean[f]), "std": float(std[f]),
                          "min": float(values[f, 0]), "max": float(maximum[f]), "p05": float(p05[f]),
                          "p50": float(median[f]), "p95": float(p95[f])})
    return summaries


def _category_label(value: float, names: Sequence[str] | None = None) -> str:
    """A category's key in a summary: its name (quoted when it is a summary key), else its number."""
    if names is not None and float(value).is_integer() and 0 <= int(value) < len(names):
        name = names[int(value)]
        return repr(name) if name in SUMMARY_KEYS else name
    return str(int(value)) if float(value).is_integer() else repr(float(value))
