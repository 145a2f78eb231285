"""Multivariate drift: maximum mean discrepancy (MMD) with a Gaussian kernel and a permutation test.

The statistic is the unbiased MMD^2 between the reference (n rows) and the window (m rows) under
k(x, y) = exp(-||x - y||^2 / (2 sigma^2)), with sigma from the median heuristic on the pooled sample
(sigma^2 = median pairwise squared distance / 2, the lower median of the distinct pairs, as alibi-detect's
`sigma_median`) unless a fixed `sigma` is given. The p-value is the fraction of permutations whose MMD^2 is at
least the observed one (alibi-detect's convention, no +1).

Permutations in blocks: with the pooled kernel matrix K (zero diagonal) and a 0/1 matrix G whose row p marks the
rows that permutation p assigns to the reference side, a' K a is one product G @ K for a whole block of
permutations, and the other two sums follow from the row sums of K. No Python loop over permutations, and the
kernel matrix is computed once per window (alibi-detect gathers a permuted copy of it per permutation).

Why blocks (`PERMUTATION_BLOCK` on the CPU): all 10,000 permutations of a 250-row window at once streamed about
100 MB per window (the drawn orders, G and G @ K, 20 MB each) through the L3 cache that the proxy's vCPU shares.
Next to an idle-priority process testing such windows, the proxy's p99 at 4 paced connections was 1.30x its
value alone; with blocks of 512, whose matrices stay in one core's L2, 1.02x (scratch A/B with
bench/bench_analysis_load.py's load, 5 rounds each). Blocks of 128 leave a yield point (see `yielding`) every 0.6 ms
of a 250-row window and are faster there: 10,000 permutations of 200 + 50 rows of 120 features took 50 ms against
66 with 512; for 1000 + 1000 rows, 1000 permutations took 213 ms against 188 (100, the default, are one block
either way). The permutations drawn, and so the p-value, are the same whatever the block size.

Backends: "numpy" (float64 BLAS), "tensorflow" (the same algorithm in float64 TensorFlow ops, on the GPU when
one is visible) and "auto" (TensorFlow when TensorFlow sees a GPU, else numpy). TensorFlow is imported only when
needed: "auto" first looks for GPU device nodes, so CPU-only hosts never pay for importing it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from sidecar.detectors.feature_drift import DriftResult
from sidecar.detectors.two_sample import FloatArray, IntArray, as_matrix

BACKENDS = ("auto", "numpy", "tensorflow")
DETECTOR_NAME = "mmd"
MAX_ROWS = 2000  # per side: the pooled kernel matrix of 4000 rows is 128 MB in float64
PERMUTATION_BLOCK = 128  # permutations per block on the CPU (see the module docstring)
_GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


class MMDDrift:
    def __init__(self, reference: npt.ArrayLike, permutations: int = 100, alpha: float = 0.05,
                 backend: str = "auto", seed: int | None = None, *, sigma: float | None = None,
                 max_rows: int = MAX_ROWS, between_blocks: Callable[[], None] | None = None) -> None:
        """`sigma` fixes the kernel bandwidth (None: median heuristic on each pooled sample). `between_blocks` is
        called after each block of permutations (the analysis workers yield their CPU there).

        Rows with a NaN or infinite value are left out (of the reference here, of windows in `test`). Time and
        memory grow with (n + m)^2, so each side is capped at `max_rows` rows: beyond, a uniform sample without
        replacement is tested (the permutation test stays exact for the sample).
        """
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2, got {max_rows}")
        self._between_blocks = between_blocks
        self.max_rows = max_rows
        self._rng = np.random.default_rng(seed)
        ref = self._cap(_finite_rows(as_matrix(reference)))
        if ref.shape[0] < 2:
            raise ValueError(f"MMD needs at least 2 finite reference rows, got {ref.shape[0]}")
        if permutations < 1:
            raise ValueError(f"permutations must be >= 1, got {permutations}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.permutations = permutations
        self.alpha = alpha
        self.sigma = sigma
        self.backend = resolve_backend(backend)
        self.features = ref.shape[1]
        self.reference_rows = ref.shape[0]
        self._kernel: _KernelBackend = (_TensorFlowBackend(ref) if self.backend == "tensorflow"
                                        else _NumpyBackend(ref))

    def test(self, current: npt.ArrayLike) -> DriftResult:
        cur = as_matrix(current)
        if cur.shape[1] != self.features:
            raise ValueError(f"window has {cur.shape[1]} features, the reference has {self.features}")
        cur = self._cap(_finite_rows(cur))
        n, m = self.reference_rows, cur.shape[0]
        if m < 2:
            return DriftResult(DETECTOR_NAME, False, 1.0, self.alpha, [], None)
        kernel = self._kernel.kernel(cur, self.sigma)
        block = self._kernel.block or self.permutations
        observed = observed_groups(n, m)
        distance = 0.0
        hits = 0
        for start in range(0, self.permutations, block):
            orders = draw_permutations(self._rng, n + m, min(block, self.permutations - start))
            # each block carries the observed split in its first row: compared within one product, so the
            # rounding of a product's shape never decides a tie
            mmd2 = self._kernel.mmd2(kernel, np.concatenate([observed, group_indicators(orders, n)]))
            distance = float(mmd2[0])
            hits += int(np.count_nonzero(mmd2[1:] >= mmd2[0]))
            if self._between_blocks is not None:
                self._between_blocks()
        p_value = hits / self.permutations
        return DriftResult(DETECTOR_NAME, p_value < self.alpha, p_value, self.alpha, [], distance)

    def _cap(self, rows: FloatArray) -> FloatArray:
        if rows.shape[0] <= self.max_rows:
            return rows
        return rows[np.sort(self._rng.choice(rows.shape[0], self.max_rows, replace=False))]


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        raise ValueError("backend 'tensorflow' needs the tensorflow package")
    if backend == "auto":
        return "tensorflow" if tensorflow_sees_gpu() else "numpy"
    return backend


def tensorflow_sees_gpu() -> bool:
    """True when TensorFlow is installed and lists a GPU (imports it only when GPU device nodes exist)."""
    if importlib.util.find_spec("tensorflow") is None:
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not any(Path(node).exists() for node in _GPU_DEVICE_NODES):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def draw_permutations(rng: np.random.Generator, total: int, count: int) -> IntArray:
    """`count` independent permutations of range(total), one per row."""
    return rng.permuted(np.tile(np.arange(total, dtype=np.int64), (count, 1)), axis=1)


def group_indicators(permutations: IntArray, n_reference: int) -> FloatArray:
    """1.0 where a pooled row is among the first `n_reference` of the permutation (the reference side)."""
    groups = np.zeros(permutations.shape)
    np.put_along_axis(groups, permutations[:, :n_reference], 1.0, axis=1)
    return groups


def observed_groups(n: int, m: int) -> FloatArray:
    return np.concatenate([np.ones(n), np.zeros(m)])[None, :]


def mmd2_from_kernel(kernel: FloatArray, groups: FloatArray, n: int) -> FloatArray:
    """Unbiased MMD^2 for every split in `groups` (rows of 0/1, n ones) from a zero-diagonal kernel matrix."""
    m = kernel.shape[0] - n
    row_sums = kernel.sum(axis=1)
    within = np.einsum("pi,pi->p", groups @ kernel, groups)  # a' K a
    towards = groups @ row_sums  # a' K 1
    cross = towards - within  # a' K b
    other = row_sums.sum() - 2.0 * towards + within  # b' K b
    return within / (n * (n - 1)) + other / (m * (m - 1)) - 2.0 * cross / (n * m)  # type: ignore[no-any-return]


def median_gamma(upper_triangle: FloatArray) -> float:
    """1 / (2 sigma^2) for the median heuristic: 1 / (lower median of the pairwise squared distances).

    When most pairs coincide the median is 0; the mean positive distance is used then (1.0 if there is none).
    """
    kth = (upper_triangle.size - 1) // 2
    median = float(np.partition(upper_triangle, kth)[kth])
    if median > 0:
        return 1.0 / median
    positive = upper_triangle[upper_triangle > 0]
    return 1.0 / float(positive.mean()) if positive.size else 1.0


def _finite_rows(x: FloatArray) -> FloatArray:
    return x[np.isfinite(x).all(axis=1)]


class _KernelBackend(Protocol):
    block: int | None  # permutations per block (None: all at once)

    def kernel(self, current: FloatArray, sigma: float | None) -> Any:
        """The pooled sample's kernel matrix (reference rows first, then `current`), zero diagonal."""

    def mmd2(self, kernel: Any, groups: FloatArray) -> FloatArray:
        """MMD^2 of each split in `groups` (rows of 0/1 marking the reference side) under `kernel`."""


class _NumpyBackend:
    """Reference-only parts (centred rows, their norms and pairwise distances) are computed once."""

    def __init__(self, reference: FloatArray) -> None:
        self.centre = reference.mean(axis=0)  # centring keeps ||x||^2 + ||y||^2 - 2x.y from cancelling
        self.reference = reference - self.centre
        self.norms = (self.reference**2).sum(axis=1)
        self.distances = _squared_distances(self.reference, self.norms, self.reference, self.norms)
        np.fill_diagonal(self.distances, 0.0)
        self.upper = self.distances[np.triu_indices(reference.shape[0], 1)]

    block: int | None = PERMUTATION_BLOCK

    def kernel(self, current: FloatArray, sigma: float | None) -> FloatArray:
        cur = current - self.centre
        cur_norms = (cur**2).sum(axis=1)
        cross = _squared_distances(self.reference, self.norms, cur, cur_norms)
        within = _squared_distances(cur, cur_norms, cur, cur_norms)
        np.fill_diagonal(within, 0.0)
        if sigma is None:
            pairs = np.concatenate([self.upper, cross.ravel(), within[np.triu_indices(cur.shape[0], 1)]])
            gamma = median_gamma(pairs)
        else:
            gamma = 1.0 / (2.0 * sigma**2)
        kernel = np.block([[self.distances, cross], [cross.T, within]])
        kernel *= -gamma
        np.exp(kernel, out=kernel)
        np.fill_diagonal(kernel, 0.0)
        return kernel

    def mmd2(self, kernel: FloatArray, groups: FloatArray) -> FloatArray:
        return mmd2_from_kernel(kernel, groups, self.reference.shape[0])


def _squared_distances(x: FloatArray, x_norms: FloatArray, y: FloatArray, y_norms: FloatArray) -> FloatArray:
    distances = x_norms[:, None] + y_norms[None, :] - 2.0 * (x @ y.T)
    return np.maximum(distances, 0.0, out=distances)


class _TensorFlowBackend:
    """The numpy backend's algorithm in float64 TensorFlow ops; placed on the GPU by TensorFlow when visible."""

    def __init__(self, reference: FloatArray) -> None:
        import tensorflow as tf

        self.tf: Any = tf
        self.centre = reference.mean(axis=0)
        self.reference = tf.constant(reference - self.centre, dtype=tf.float64)

    block: int | None = None  # a GPU takes all permutations in one product

    def kernel(self, current: FloatArray, sigma: float | None) -> Any:
        tf = self.tf
        pooled = tf.concat([self.reference, tf.constant(current - self.centre, dtype=tf.float64)], axis=0)
        norms = tf.reduce_sum(pooled * pooled, axis=1)
        distances = norms[:, None] + norms[None, :] - 2.0 * tf.matmul(pooled, pooled, transpose_b=True)
        distances = tf.linalg.set_diag(tf.maximum(distances, 0.0), tf.zeros_like(norms))
        gamma = self._median_gamma(distances) if sigma is None else tf.constant(1.0 / (2.0 * sigma**2), tf.float64)
        return tf.linalg.set_diag(tf.exp(-gamma * distances), tf.zeros_like(norms))

    def mmd2(self, kernel: Any, groups: FloatArray) -> FloatArray:
        tf = self.tf
        n = int(self.reference.shape[0])
        g = tf.constant(groups, dtype=tf.float64)
        m = int(kernel.shape[0]) - n
        row_sums = tf.reduce_sum(kernel, axis=1)
        within = tf.reduce_sum(tf.matmul(g, kernel) * g, axis=1)
        towards = tf.linalg.matvec(g, row_sums)
        cross = towards - within
        other = tf.reduce_sum(row_sums) - 2.0 * towards + within
        mmd2 = within / (n * (n - 1)) + other / (m * (m - 1)) - 2.0 * cross / (n * m)
        return np.asarray(mmd2.numpy(), dtype=np.float64)

    def _median_gamma(self, distances: Any) -> Any:
        """`median_gamma` on the device: sort the strict upper triangle, take the lower median."""
        tf = self.tf
        size = int(distances.shape[0])
        ones = tf.ones((size, size), dtype=tf.bool)
        strict_upper = tf.logical_and(tf.linalg.band_part(ones, 0, -1), tf.logical_not(tf.linalg.band_part(ones, 0, 0)))
        pairs = tf.sort(tf.boolean_mask(distances, strict_upper))
        median = pairs[(int(pairs.shape[0]) - 1) // 2]
        positive = tf.reduce_sum(tf.cast(pairs > 0, tf.float64))
        fallback = tf.where(positive > 0, tf.math.divide_no_nan(tf.reduce_sum(pairs), positive), 1.0)
        return 1.0 / tf.where(median > 0, median, fallback)
