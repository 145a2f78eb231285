"""The generating rules behind the testbed's models: deterministic synthetic data, shared with demos and tests.

The models are trained on these rules at start-up, so a client that draws inputs here knows the ground truth:
- classifier: three iris-like Gaussian classes in 4 features; the truth is the class a row was drawn from. The
  classes overlap a little (about 90-95% of rows are classifiable), like a real model's accuracy.
- regressor: a linear target of 4 standard-normal features plus small noise.
- multi: 3 features and a string tag; the score is high when x0 + x1 - x2 > 0.
- pair: two named numeric inputs, `a` (2 values) and `b` (one value), and a linear target of the three plus noise.
`drift` shifts the input distributions so a demo can make a drift detector fire.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

CLASS_CENTERS = np.array([[5.0, 3.4, 1.5, 0.25], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.5, 2.0]], dtype=np.float32)
CLASS_SPREAD = np.array([0.55, 0.45, 0.9, 0.5], dtype=np.float32)
CLASS_LABELS = ("0", "1", "2")
REGRESSION_WEIGHTS = np.array([1.5, -2.0, 0.5, 0.25], dtype=np.float32)
REGRESSION_BIAS = 3.0
REGRESSION_NOISE = 0.1
MULTI_TAGS = (b"alpha", b"beta", b"gamma")
PAIR_WEIGHTS = np.array([1.5, -2.0, 0.75], dtype=np.float32)  # a[0], a[1], b
PAIR_BIAS = 1.0


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def classifier_batch(n: int, seed: int | np.random.Generator = 0, drift: float = 0.0) -> tuple[Array, Array]:
    """`n` rows of `features` float32 [n, 4] and their true classes int64 [n] (0, 1 or 2)."""
    rng = _rng(seed)
    classes = rng.integers(0, len(CLASS_CENTERS), size=n)
    noise = rng.normal(size=(n, 4)).astype(np.float32) * CLASS_SPREAD
    features = CLASS_CENTERS[classes] + noise + np.float32(drift) * CLASS_SPREAD
    return features.astype(np.float32), classes.astype(np.int64)


def regressor_target(features: Array) -> Array:
    """The noise-free regression target of `features` [n, 4]."""
    return (np.asarray(features, np.float32) @ REGRESSION_WEIGHTS + REGRESSION_BIAS).astype(np.float32)


def regressor_batch(n: int, seed: int | np.random.Generator = 0, drift: float = 0.0) -> tuple[Array, Array]:
    """`n` rows of `features` float32 [n, 4] and noisy targets float32 [n]."""
    rng = _rng(seed)
    features = (rng.normal(size=(n, 4)) + drift).astype(np.float32)
    target = regressor_target(features) + rng.normal(scale=REGRESSION_NOISE, size=n).astype(np.float32)
    return features, target.astype(np.float32)


def multi_truth(x: Array) -> Array:
    """1.0 where the multi model's rule says "high", else 0.0."""
    x = np.asarray(x, np.float32)
    truth: Array = (x[:, 0] + x[:, 1] - x[:, 2] > 0).astype(np.float32)
    return truth


def multi_batch(n: int, seed: int | np.random.Generator = 0, drift: float = 0.0) -> tuple[Array, Array, Array]:
    """`x` float32 [n, 3], `tag` bytes (object) [n] and the true label float32 [n]."""
    rng = _rng(seed)
    x = (rng.normal(size=(n, 3)) + drift).astype(np.float32)
    tags = np.empty(n, dtype=object)
    tags[:] = [MULTI_TAGS[i] for i in rng.integers(0, len(MULTI_TAGS), size=n)]
    return x, tags, multi_truth(x)


def pair_batch(n: int, seed: int | np.random.Generator = 0, drift: float = 0.0) -> tuple[Array, Array, Array]:
    """`a` float32 [n, 2], `b` float32 [n] and noisy targets float32 [n]."""
    rng = _rng(seed)
    a = (rng.normal(size=(n, 2)) + drift).astype(np.float32)
    b = (rng.normal(size=n) + drift).astype(np.float32)
    target = np.column_stack([a, b]) @ PAIR_WEIGHTS + PAIR_BIAS + rng.normal(scale=REGRESSION_NOISE, size=n)
    return a, b, target.astype(np.float32)


def fit_pair(version: int) -> tuple[Array, float]:
    """Least-squares weights (a[0], a[1], b) and bias of the pair model, fitted on `pair_batch` (both backends)."""
    a, b, target = pair_batch(1500, seed=version)
    x = np.column_stack([a, b, np.ones(len(b), np.float32)])
    solution = np.linalg.lstsq(x, target, rcond=None)[0].astype(np.float32)
    return solution[:3], float(solution[3])
