"""Streaming summaries of columns, for the per-bucket statistics of the history.

A bucket sees its rows in blocks. Per numeric column it keeps the exact count, missing count, mean and standard
deviation (Chan's parallel update of mean and sum of squared deviations, so blocks of any size merge without the
cancellation of a running sum of squares), min and max, and up to `capacity` values for the percentiles: all of
them while they fit (the percentiles then equal numpy's), a uniform sample beyond (Algorithm R, vectorised), so
memory stays bounded. Per categorical column it counts levels exactly. Non-finite values (NaN, infinities) are
missing. The standard deviation is the population one (numpy's default, ddof=0); percentiles interpolate linearly
(numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PERCENTILES = (5.0, 50.0, 95.0)
OTHER = "__other__"  # the levels beyond a bound, and the values a coded column's vocabulary had no room for


class NumericSummary:
    """Count, missing, mean, std, min, max and sampled percentiles of the columns of row blocks."""

    def __init__(self, columns: int, capacity: int, rng: np.random.Generator | None = None) -> None:
        self.columns = columns
        self.capacity = capacity
        self.rows = 0
        self.valid = np.zeros(columns, dtype=np.int64)
        self.mean = np.zeros(columns)
        self.m2 = np.zeros(columns)
        self.low = np.full(columns, np.inf)
        self.high = np.full(columns, -np.inf)
        self._sample = np.empty((0, columns))
        self._rng = rng or np.random.default_rng()

    @property
    def sampled(self) -> bool:
        """True once the percentiles come from a sample, not from every value."""
        return self.rows > self.capacity

    def add(self, block: np.ndarray) -> None:
        """Fold in a (rows, columns) block."""
        if block.shape[0] == 0:
            return
        block = np.asarray(block, dtype=np.float64)
        finite = np.isfinite(block)
        clean = np.where(finite, block, 0.0)
        count = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            block_mean = np.where(count > 0, clean.sum(axis=0) / np.maximum(count, 1), 0.0)
            deviations = np.where(finite, block - block_mean, 0.0)
            block_m2 = (deviations * deviations).sum(axis=0)
        total = self.valid + count
        delta = block_mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, count / np.maximum(total, 1), 0.0)
            self.m2 = self.m2 + block_m2 + delta * delta * self.valid * share
        self.mean = self.mean + delta * share
        self.valid = total
        self.low = np.minimum(self.low, np.where(finite, block, np.inf).min(axis=0))
        self.high = np.maximum(self.high, np.where(finite, block, -np.inf).max(axis=0))
        self._keep(block)
        self.rows += block.shape[0]

    def _keep(self, block: np.ndarray) -> None:
        """Algorithm R over rows: every row seen so far stays in the sample with the same probability."""
        room = self.capacity - self._sample.shape[0]
        if room > 0:
            self._sample = np.concatenate([self._sample, block[:room]], axis=0)
            block = block[room:]
        if block.shape[0] == 0:
            return
        seen = self.rows + room if room > 0 else self.rows
        positions = np.arange(seen + 1, seen + block.shape[0] + 1)
        slots = (self._rng.random(block.shape[0]) * positions).astype(np.int64)
        taken = slots < self.capacity
        for row, slot in zip(np.flatnonzero(taken).tolist(), slots[taken].tolist(), strict=True):
            self._sample[slot] = block[row]

    def summary(self, column: int) -> dict[str, Any]:
        """The column's statistics as plain values (None where no value was finite)."""
        valid = int(self.valid[column])
        entry: dict[str, Any] = {"kind": "numeric", "count": self.rows, "missing": self.rows - valid}
        if valid == 0:
            entry.update(dict.fromkeys(("mean", "std", "min", "p5", "p50", "p95", "max")))
            return entry
        values = self._sample[:, column]
        values = values[np.isfinite(values)]
        quantiles = np.percentile(values, PERCENTILES).tolist() if values.size else [None] * len(PERCENTILES)
        entry.update({"mean": float(self.mean[column]), "std": math.sqrt(max(0.0, float(self.m2[column]) / valid)),
                      "min": float(self.low[column]), "p5": quantiles[0], "p50": quantiles[1], "p95": quantiles[2],
                      "max": float(self.high[column])})
        return entry


class LevelCounts:
    """Exact level frequencies of one categorical column; at most `max_levels` levels keep their own name."""

    OTHER = OTHER

    def __init__(self, max_levels: int) -> None:
        self.max_levels = max_levels
        self.rows = 0
        self.missing = 0
        self.counts: dict[float, int] = {}

    def add(self, column: np.ndarray) -> None:
        column = np.asarray(column, dtype=np.float64)
        self.rows += column.shape[0]
        finite = column[np.isfinite(column)]
        self.missing += column.shape[0] - finite.shape[0]
        levels, counts = np.unique(finite, return_counts=True)
        for level, count in zip(levels.tolist(), counts.tolist(), strict=True):
            self.counts[level] = self.counts.get(level, 0) + count

    def summary(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Levels by frequency, the most frequent first; `names[code]` names a coded level (strings). Levels of one
        name (the codes a vocabulary named `OTHER`, and the levels beyond the bound) are counted together."""
        ordered = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        levels: dict[str, int] = {}
        for level, count in ordered[:self.max_levels]:
            name = level_name(level, names)
            levels[name] = levels.get(name, 0) + count
        rest = sum(count for _, count in ordered[self.max_levels:])
        if rest:
            levels[self.OTHER] = levels.get(self.OTHER, 0) + rest
        return {"kind": "categorical", "count": self.rows, "missing": self.missing, "levels": levels}


def level_name(level: float, names: Sequence[str] | None = None) -> str:
    """A level as text: its string when `names` holds it, else the number (integers without a decimal point)."""
    if names is not None and level == int(level) and 0 <= int(level) < len(names):
        return names[int(level)]
    return str(int(level)) if level == int(level) and abs(level) < 2**53 else repr(level)
