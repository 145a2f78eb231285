"""False-alarm rate and detection power of the drift detectors, measured by simulation.

False alarms: reference and window drawn from the same distribution (independent standard normal features), a
new reference for every window, so the rate is the per-window probability of a false alarm. For a fixed
reference the rate varies around that probability with the reference's own sampling noise; the script also
shows that spread (`--references` references x `--windows-per-reference` windows). Power: a window whose first
feature is shifted by `--shift` reference standard deviations. Defaults: reference 1000 rows, window 1000 rows,
20 features, KS + Benjamini-Hochberg at 0.05. Targets: false alarms <= 5% of windows, power >= 90%. Rates come
with 95% Wilson intervals; under the null a level-0.05 test flags about 5% of windows by construction (KS + BH:
at most 5%, Simes' bound, a little less because exact KS p-values are discrete; MMD with 100 permutations and
alibi-detect's p-value convention: 5/101 = 4.95%), so a false-alarm estimate is judged against its interval as
well as its point value.

    python bench/bench_drift_power.py                 # KS (10000 windows, 500 trials) and MMD (500 each)
    python bench/bench_drift_power.py --mmd-trials 0  # KS only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.detectors.feature_drift import DriftResult, FeatureDriftDetector
from sidecar.detectors.mmd import MMDDrift

FAR_TARGET = 0.05
POWER_TARGET = 0.90


@dataclass
class Rate:
    label: str
    hits: int
    trials: int
    seconds_per_test: float

    @property
    def value(self) -> float:
        return self.hits / self.trials

    def interval(self) -> tuple[float, float]:
        """95% Wilson score interval."""
        z, n, p = 1.96, self.trials, self.value
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def simulate(build: Callable[[np.ndarray], Callable[[np.ndarray], DriftResult]], args: argparse.Namespace,
             trials: int, shift: float, per_reference: int, seed: int) -> tuple[int, float]:
    """(windows flagged as drift, seconds per test)."""
    rng = np.random.default_rng(seed)
    hits, elapsed = 0, 0.0
    test: Callable[[np.ndarray], DriftResult] | None = None
    for trial in range(trials):
        if test is None or trial % per_reference == 0:
            test = build(rng.normal(size=(args.reference, args.features)))
        window = rng.normal(size=(args.window, args.features))
        window[:, 0] += shift
        start = time.perf_counter()
        hits += bool(test(window).drift)
        elapsed += time.perf_counter() - start
    return hits, elapsed / trials


def feature_drift(args: argparse.Namespace) -> Callable[[np.ndarray], Callable[[np.ndarray], DriftResult]]:
    names = [f"f{i}" for i in range(args.features)]
    return lambda reference: FeatureDriftDetector(reference, names, test=args.test, correction=args.correction,
                                                  alpha=args.alpha).test


def mmd(args: argparse.Namespace) -> Callable[[np.ndarray], Callable[[np.ndarray], DriftResult]]:
    return lambda reference: MMDDrift(reference, permutations=args.permutations, alpha=args.alpha,
                                      backend=args.mmd_backend, seed=args.seed).test


def measure(name: str, build: Callable[[np.ndarray], Callable[[np.ndarray], DriftResult]],
            args: argparse.Namespace, windows: int, trials: int) -> list[Rate]:
    alarms, far_seconds = simulate(build, args, windows, 0.0, 1, args.seed)
    detections, power_seconds = simulate(build, args, trials, args.shift, 1, args.seed + 1)
    return [Rate(f"{name}: false alarms", alarms, windows, far_seconds),
            Rate(f"{name}: power", detections, trials, power_seconds)]


def fixed_reference_spread(name: str, build: Callable[[np.ndarray], Callable[[np.ndarray], DriftResult]],
                           args: argparse.Namespace) -> None:
    """False-alarm rate per fixed reference: what one deployment with one reference experiences."""
    rates = [simulate(build, args, args.windows_per_reference, 0.0, args.windows_per_reference,
                      args.seed + 100 + r)[0] / args.windows_per_reference for r in range(args.references)]
    print(f"\n{name}, false alarms per fixed reference ({args.references} references x "
          f"{args.windows_per_reference} windows): mean {np.mean(rates):.1%}, median {np.median(rates):.1%}, "
          f"min {min(rates):.1%}, max {max(rates):.1%}, references above 10%: "
          f"{sum(r > 0.10 for r in rates)} of {args.references}.")


def report(rates: list[Rate]) -> None:
    print("| measure | flagged / windows | rate | 95% interval | target | point met | interval reaches target "
          "| ms per test |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in rates:
        low, high = rate.interval()
        is_far = rate.label.endswith("false alarms")
        target = f"<= {FAR_TARGET:.0%}" if is_far else f">= {POWER_TARGET:.0%}"
        met = rate.value <= FAR_TARGET if is_far else rate.value >= POWER_TARGET
        reaches = low <= FAR_TARGET if is_far else high >= POWER_TARGET
        print(f"| {rate.label} | {rate.hits} / {rate.trials} | {rate.value:.1%} | {low:.1%} - {high:.1%} | "
              f"{target} | {'yes' if met else 'NO'} | {'yes' if reaches else 'NO'} | "
              f"{rate.seconds_per_test * 1e3:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=1000, help="reference rows")
    parser.add_argument("--window", type=int, default=1000, help="rows per window")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--shift", type=float, default=0.3, help="mean shift of feature 0, in reference stds")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--test", choices=["ks", "cvm"], default="ks")
    parser.add_argument("--correction", choices=["bh", "bonferroni"], default="bh")
    parser.add_argument("--windows", type=int, default=10000, help="stationary windows for the false-alarm rate")
    parser.add_argument("--trials", type=int, default=500, help="shifted windows for the power")
    parser.add_argument("--references", type=int, default=20, help="fixed references for the spread (0: skip)")
    parser.add_argument("--windows-per-reference", type=int, default=50)
    parser.add_argument("--mmd-trials", type=int, default=500, help="windows and trials for MMD (0: skip MMD)")
    parser.add_argument("--permutations", type=int, default=100, help="MMD permutations")
    parser.add_argument("--mmd-backend", choices=["auto", "numpy", "tensorflow"], default="auto")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()

    print(f"## Drift detectors: false alarms and power\n\nreference {args.reference} rows, window {args.window} "
          f"rows, {args.features} independent N(0, 1) features, alpha {args.alpha}; power: feature 0 shifted by "
          f"{args.shift} std.\n")
    rates = measure(f"{args.test.upper()} + {args.correction.upper()}", feature_drift(args), args, args.windows,
                    args.trials)
    if args.mmd_trials > 0:
        backend = MMDDrift(np.zeros((2, 1)), backend=args.mmd_backend).backend
        rates += measure(f"MMD ({args.permutations} permutations, {backend})", mmd(args), args, args.mmd_trials,
                         args.mmd_trials)
    report(rates)
    if args.references > 0:
        fixed_reference_spread(f"{args.test.upper()} + {args.correction.upper()}", feature_drift(args), args)


if __name__ == "__main__":
    main()
