"""Settings of the analysis stage: worker processes, references, windows and detectors.

Global settings apply to every model; the `models` mapping overrides some of them per model and adds what only
makes sense per model (a reference file, the task, an autoencoder). `AnalysisSettings.model_config(name)` gives
the resolved settings of one model. Unknown per-model keys are rejected with the model and key named.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sidecar.messages.names import served_model, versioned_name
from sidecar.options import (
    option,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_float,
    parse_int,
    parse_mapping,
    parse_str,
)

TASKS = ("auto", "classification", "binary", "multiclass", "regression")
_ANALYSIS_TASK = {"binary": "classification", "multiclass": "classification"}  # the feedback side keeps the detail
WINDOW_MODES = ("tumbling", "sliding", "time")
REFERENCE_SUFFIXES = (".npz", ".npy", ".csv")


def _parse_reference_path(value: Any) -> str:
    path = parse_str(value).strip()
    if not path.lower().endswith(REFERENCE_SUFFIXES):
        raise ValueError(f"reference file must end in {', '.join(REFERENCE_SUFFIXES)}, got {path!r}")
    return path


def _parse_nonempty(value: Any) -> str:
    text = parse_str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


FEATURE_KINDS = ("numeric", "categorical")


def _parse_kinds(value: Any) -> dict[str, str]:
    """`{feature or input name: numeric | categorical}`."""
    kinds: dict[str, str] = {}
    for name, kind in parse_mapping(value).items():
        text = str(kind).strip().lower()
        if text not in FEATURE_KINDS:
            raise ValueError(f"{name}: kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
        kinds[str(name)] = text
    return kinds


MODEL_KEYS: dict[str, Callable[[Any], Any]] = {
    "reference": _parse_reference_path,
    "reference_size": parse_int(10),
    "window_size": parse_int(10),
    "window_mode": parse_choice(*WINDOW_MODES),
    "window_step": parse_int(0),
    "window_seconds": parse_duration(0.1),
    "task": parse_choice(*TASKS),
    "output": _parse_nonempty,
    "autoencoder": _parse_nonempty,
    "kinds": _parse_kinds,
    "by_version": parse_bool,
}


def parse_models(value: Any) -> dict[str, dict[str, Any]]:
    """The per-model mapping `{model: {key: value}}`, each value parsed; unknown keys raise naming model and key."""
    models: dict[str, dict[str, Any]] = {}
    for name, raw in parse_mapping(value).items():
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"model {name!r}: expected a mapping of settings")
        parsed: dict[str, Any] = {}
        for key, item in raw.items():
            normal = str(key).replace("-", "_")
            parser = MODEL_KEYS.get(normal)
            if parser is None:
                raise ValueError(f"model {name!r}: unknown key {key!r} (known: {', '.join(MODEL_KEYS)})")
            try:
                parsed[normal] = parser(item)
            except ValueError as exc:
                raise ValueError(f"model {name!r}: {key}: {exc}") from None
        models[str(name)] = parsed
    return models


@dataclass(frozen=True)
class ModelConfig:
    """The resolved analysis settings of one model (global values overridden by its `models` entry)."""

    model: str
    reference: str | None
    reference_size: int
    window_size: int
    window_mode: str
    window_step: int
    window_seconds: float
    task: str  # the analysis's task: auto, classification or regression
    output: str | None
    autoencoder: str | None
    kinds: dict[str, str] = field(default_factory=dict)
    by_version: bool = False  # each version (or label) analysed apart, as `model@version`
    declared_task: str = "auto"  # the task as configured (binary and multiclass kept apart, for the feedback side)

    @property
    def effective_step(self) -> int:
        """Instances between evaluations of a sliding window (0 in the settings means a quarter of the window)."""
        return self.window_step or max(1, self.window_size // 4)

    def check(self) -> None:
        if self.window_mode == "sliding" and self.effective_step > self.window_size:
            raise ValueError(f"model {self.model!r}: window_step ({self.window_step}) is larger than window_size "
                             f"({self.window_size}); sliding windows would skip instances")


@dataclass(frozen=True)
class AnalysisSettings:
    analysis_enabled: bool = option(True, "decode captured traffic and run the detectors in worker processes",
                                    parse_bool)
    workers: int = option(1, "analysis worker processes (models are sharded across them)", parse_int(1, 64))
    worker_priority: str = option("idle", "CPU priority of analysis workers: idle (Linux SCHED_IDLE: they only use "
                                  "CPU the proxy leaves), low (nice 10) or normal",
                                  parse_choice("idle", "low", "normal"))
    worker_cpu_share: float = option(1.0, "most of one CPU each worker may use (it pauses after each batch to stay "
                                     "under it); below 1 trades analysed records for proxy latency on small nodes",
                                     parse_float(0.01, 1.0))
    result_interval: float = option(1.0, "longest a worker holds analysis results before sending them to the main "
                                    "process, merged (0: after every batch); fewer, smaller sends keep the proxy's "
                                    "tail latency down", parse_duration())
    analysis_queue_batches: int = option(4, "batches in flight per worker; beyond, records wait in the capture ring",
                                         parse_int(1, 1000))
    reference_size: int = option(1000, "instances collected as the reference when no reference file is given",
                                 parse_int(10))
    window_size: int = option(1000, "instances per tumbling window compared with the reference", parse_int(10))
    window_mode: str = option("tumbling", "window kind: tumbling, sliding or time", parse_choice(*WINDOW_MODES))
    window_step: int = option(0, "sliding windows: instances between evaluations (0 = window_size // 4)",
                              parse_int(0))
    window_seconds: float = option(60.0, "time windows: bucket length in seconds", parse_duration(0.1))
    window_min_instances: int = option(20, "time windows with fewer instances are not evaluated", parse_int(2))
    drift_test: str = option("ks", "numeric feature drift test: ks or cvm", parse_choice("ks", "cvm"))
    drift_correction: str = option("bh", "multiple-testing correction: bh (Benjamini-Hochberg) or bonferroni",
                                   parse_choice("bh", "bonferroni"))
    drift_p_value: float = option(0.05, "significance level after correction", parse_float(1e-9, 0.5))
    mmd_enabled: bool = option(False, "run the multivariate MMD drift test (costly; TensorFlow on a GPU if visible)",
                               parse_bool)
    mmd_permutations: int = option(100, "MMD permutation count", parse_int(10, 10_000))
    outlier_fpr: float = option(0.01, "outlier threshold: false-positive rate on the reference",
                                parse_float(1e-6, 0.5))
    categorical_max_values: int = option(20, "integer features with at most this many distinct reference values "
                                         "are treated as categorical", parse_int(1, 10_000))
    max_feature_labels: int = option(20, "features exported per model with their own label (the worst first)",
                                     parse_int(0, 1000))
    max_features: int = option(256, "numeric input features tested one by one per model; wider inputs (images, "
                               "embeddings) are analysed whole through a projection learned from the reference",
                               parse_int(1, 100_000))
    projection_components: int = option(32, "principal components of the projection used for inputs wider than "
                                        "max_features (a residual, the row mean and spread are added)",
                                        parse_int(1, 1000))
    analysis_by_version: bool = option(False, "analyse each version (or label) a request names apart, as "
                                       "`model@version` in metrics and /v1/monitor (each with its own reference and "
                                       "quality), so canary and stable can be compared; per model: by_version",
                                       parse_bool)
    signature_lookup: bool = option(True, "ask the model server for each model's signature (input and output "
                                    "types and shapes) before inferring them from the data", parse_bool)
    history_bucket_seconds: float = option(60.0, "history buckets: seconds of capture time per bucket of input, "
                                           "output, label, drift and outlier statistics", parse_duration(0.1))
    history_bucket_instances: int = option(0, "history buckets: instances per bucket instead (0: off; when set it "
                                           "wins over history_bucket_seconds)", parse_int(0))
    history_max_features: int = option(256, "input columns with statistics in each history bucket (the first of "
                                       "those the analysis keeps; the log and /v1/monitor/{model} say when columns "
                                       "are left out)",
                                       parse_int(1, 100_000))
    history_max_levels: int = option(50, "levels (and predicted or true classes) per feature in a history bucket, "
                                     "the most frequent first; the rest count as __other__", parse_int(1, 10_000))
    history_sample_rows: int = option(10_000, "rows per history bucket whose values give exact percentiles; "
                                      "beyond, percentiles come from a uniform sample of this many (the bucket says "
                                      "sampled: true); counts, mean, std, min and max stay exact",
                                      parse_int(100, 10_000_000))
    history_retention: float = option(30 * 86400.0, "how long history buckets are kept (SQLite in the state "
                                      "directory)", parse_duration(60.0))
    history_max_rows: int = option(200_000, "history buckets kept in all models (the oldest removed first)",
                                   parse_int(100))
    quality_estimation: bool = option(True, "estimate classifiers' accuracy, precision, recall and F1 per window from "
                                      "their probabilities before labels arrive (CBPE)", parse_bool)
    estimation_min_labels: int = option(200, "joined labels needed before the quality estimate calibrates the "
                                        "probabilities (isotonic); before, they are assumed calibrated",
                                        parse_int(10))
    estimation_calibration_pairs: int = option(5000, "latest labelled instances the calibration is fitted on",
                                               parse_int(10))
    estimation_memory: int = option(50_000, "latest instances per model whose confidence is kept for labels that "
                                    "arrive later", parse_int(100))
    importance_enabled: bool = option(False, "periodically explain a sample of each model's recent traffic and of "
                                      "its reference (KernelSHAP through the model server, needs the `explain` "
                                      "extra) and report which features drive the model in /v1/monitor/{model} "
                                      "and sidecar_feature_importance", parse_bool)
    importance_interval: float = option(300.0, "how often the feature importance is computed", parse_duration(1.0))
    importance_rows: int = option(20, "rows explained per model from its recent traffic, and as many from its "
                                  "reference (the workers keep this many of the latest rows)", parse_int(2, 1000))
    importance_max_model_calls: int = option(2000, "predict calls (of --explain-batch-rows rows) the feature "
                                             "importance may make per interval, all "
                                             "models together (models beyond wait for the next interval)",
                                             parse_int(1, 1_000_000))
    models: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "per-model settings (YAML mapping model -> {reference, reference_size, window_size, window_mode, "
                "window_step, window_seconds, task, output, autoencoder, kinds: {feature or input: numeric|"
                "categorical}, by_version})",
        "parse": parse_models, "secret": False})

    def history_bucket(self) -> dict[str, Any]:
        """The history's bucket, as the history API and its messages describe it."""
        if self.history_bucket_instances:
            return {"kind": "count", "instances": self.history_bucket_instances}
        return {"kind": "time", "seconds": float(self.history_bucket_seconds)}

    def model_config(self, model: str) -> ModelConfig:
        """Resolved settings of `model` (parsed once per configured model), or of the model inside an analysis name
        `model@version`; raises ValueError naming the model and key when its entry is invalid."""
        configured = self.configured_models.get(model)
        if configured is not None:
            return configured
        served = served_model(model)
        if served != model and self.versions_apart(served):
            return self.model_config(served)
        return self._resolve(model)

    def versions_apart(self, model: str) -> bool:
        configured = self.configured_models.get(model)
        return configured.by_version if configured is not None else self.analysis_by_version

    def analysis_name(self, model: str, version: str) -> str:
        """The name `model`'s results are kept under for a request naming `version` (a number, a label or "")."""
        return versioned_name(model, version) if version and self.versions_apart(model) else model

    def served_name(self, name: str) -> str:
        """The model-server name of an analysis name."""
        served = served_model(name)
        return served if served != name and name not in self.configured_models and self.versions_apart(served) \
            else name

    @cached_property
    def configured_models(self) -> dict[str, ModelConfig]:
        """The typed settings of every model the `models` mapping names."""
        return {model: self._resolve(model) for model in self.models}

    def task_overrides(self) -> dict[str, str]:
        """model -> task, for the models whose task is configured (as written: binary, multiclass, ...)."""
        return {model: config.declared_task for model, config in self.configured_models.items()
                if config.declared_task != "auto"}

    def _resolve(self, model: str) -> ModelConfig:
        overrides = parse_models({model: self.models.get(model) or {}})[model]
        config = ModelConfig(
            model=model,
            reference=overrides.get("reference"),
            reference_size=overrides.get("reference_size", self.reference_size),
            window_size=overrides.get("window_size", self.window_size),
            window_mode=overrides.get("window_mode", self.window_mode),
            window_step=overrides.get("window_step", self.window_step),
            window_seconds=overrides.get("window_seconds", self.window_seconds),
            task=_ANALYSIS_TASK.get(overrides.get("task", "auto"), overrides.get("task", "auto")),
            output=overrides.get("output"),
            autoencoder=overrides.get("autoencoder"),
            kinds=overrides.get("kinds", {}),
            by_version=overrides.get("by_version", self.analysis_by_version),
            declared_task=overrides.get("task", "auto"),
        )
        config.check()
        return config

    def check(self) -> None:
        """Cross-field checks (the global window settings and every configured model); ValueError on a problem."""
        if self.window_mode == "sliding" and self.window_step > self.window_size:
            raise ValueError(f"window_step ({self.window_step}) is larger than window_size ({self.window_size}); "
                             "sliding windows would skip instances")
        _ = self.configured_models
