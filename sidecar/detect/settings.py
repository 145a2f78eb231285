"""Settings of the analysis stage: worker processes, references, windows and detectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.options import (
    option,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_float,
    parse_int,
    parse_mapping,
)


@dataclass(frozen=True)
class AnalysisSettings:
    analysis_enabled: bool = option(True, "decode captured traffic and run the detectors in worker processes",
                                    parse_bool)
    workers: int = option(1, "analysis worker processes (models are sharded across them)", parse_int(1, 64))
    reference_size: int = option(1000, "instances collected as the reference when no reference file is given",
                                 parse_int(10))
    window_size: int = option(1000, "instances per tumbling window compared with the reference", parse_int(10))
    window_mode: str = option("tumbling", "window kind: tumbling, sliding or time",
                              parse_choice("tumbling", "sliding", "time"))
    window_step: int = option(0, "sliding windows: instances between evaluations (0 = window_size // 4)",
                              parse_int(0))
    window_seconds: float = option(60.0, "time windows: bucket length in seconds", parse_duration(0.1))
    drift_test: str = option("ks", "numeric feature drift test: ks or cvm", parse_choice("ks", "cvm"))
    drift_correction: str = option("bh", "multiple-testing correction: bh (Benjamini-Hochberg) or bonferroni",
                                   parse_choice("bh", "bonferroni"))
    drift_p_value: float = option(0.05, "significance level after correction", parse_float(1e-9, 0.5))
    mmd_enabled: bool = option(False, "run the multivariate MMD drift test (costly; TensorFlow on a GPU if visible)",
                               parse_bool)
    mmd_permutations: int = option(100, "MMD permutation count", parse_int(10, 10_000))
    outlier_fpr: float = option(0.01, "outlier threshold: false-positive rate on the reference",
                                parse_float(1e-6, 0.5))
    max_feature_labels: int = option(20, "features exported per model with their own label (the worst first)",
                                     parse_int(0, 1000))
    max_features: int = option(256, "numeric features analysed per model (beyond: ignored, counted)",
                               parse_int(1, 100_000))
    models: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "per-model settings (YAML mapping model -> {reference, window_size, window_mode, task, ...})",
        "parse": parse_mapping, "secret": False})
