"""Anodot metrics 2.0 samples of the history buckets (see `sidecar.history`), one set per closed bucket, with the
bucket's start as timestamp and the same properties as the registry's samples (`model`, and `feature`, `level`,
`class` or `detector` where they apply).

| `what`                                                   | target_type | per                               |
|----------------------------------------------------------|-------------|-----------------------------------|
| `bucket_instances`, `bucket_requests`                    | counter     | model                             |
| `bucket_input_mean`, `_std`, `_min`, `_p5`, `_p50`, `_p95`, `_max` | gauge | model, feature (numeric)       |
| `bucket_input_missing`                                   | counter     | model, feature                    |
| `bucket_input_level_count`                               | counter     | model, feature, level (categorical) |
| `bucket_output_class_count`                              | counter     | model, class                      |
| `bucket_output_class_mean_probability`                   | gauge       | model, class                      |
| `bucket_output_mean`, `_std`, `_p5`, `_p50`, `_p95`      | gauge       | model (regression)                |
| `bucket_label_count`, `bucket_label_class_count`         | counter     | model (, class)                   |
| `bucket_label_accuracy`, `_f1`, `_rmse`, `_mae`          | gauge       | model                             |
| `bucket_drift_windows`, `bucket_drift_drifted`           | counter     | model, detector                   |
| `bucket_drift_min_p_value`                               | gauge       | model, detector                   |
| `bucket_outlier_instances`, `bucket_outliers`            | counter     | model, detector                   |

Only the first `max_features` inputs of a bucket are exported (`--max-feature-labels`), as for the drift gauges.
"""

from __future__ import annotations

from typing import Any

from sidecar.export.anodot import BucketAggregator, Labels, Sample

NUMERIC_STATISTICS = ("mean", "std", "min", "p5", "p50", "p95", "max")
OUTPUT_STATISTICS = ("mean", "std", "p5", "p50", "p95")


def history_samples(aggregator: BucketAggregator, model: str, bucket: dict[str, Any],
                    max_features: int) -> list[Sample]:
    out: list[Sample] = []
    timestamp = int(bucket["start"])
    model_label: Labels = (("model", model),)

    def add(what: str, target_type: str, value: Any, *labels: tuple[str, str]) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            aggregator.add(out, what, target_type, model_label + labels, float(value), timestamp)

    add("bucket_instances", "counter", bucket.get("instances"))
    add("bucket_requests", "counter", bucket.get("requests"))
    for name, entry in list((bucket.get("inputs") or {}).items())[:max_features]:
        feature = ("feature", name)
        add("bucket_input_missing", "counter", entry.get("missing"), feature)
        if entry.get("kind") == "categorical":
            for level, count in (entry.get("levels") or {}).items():
                add("bucket_input_level_count", "counter", count, feature, ("level", str(level)))
            continue
        for statistic in NUMERIC_STATISTICS:
            add(f"bucket_input_{statistic}", "gauge", entry.get(statistic), feature)
    outputs = bucket.get("outputs") or {}
    for label, entry in (outputs.get("classes") or {}).items():
        add("bucket_output_class_count", "counter", entry.get("count"), ("class", str(label)))
        add("bucket_output_class_mean_probability", "gauge", entry.get("mean_probability"), ("class", str(label)))
    if outputs.get("task") == "regression":
        for statistic in OUTPUT_STATISTICS:
            add(f"bucket_output_{statistic}", "gauge", outputs.get(statistic))
    labels = bucket.get("labels") or {}
    if labels:
        add("bucket_label_count", "counter", labels.get("count"))
        for label, count in (labels.get("classes") or {}).items():
            add("bucket_label_class_count", "counter", count, ("class", str(label)))
        for statistic in ("accuracy", "f1", "rmse", "mae"):
            add(f"bucket_label_{statistic}", "gauge", labels.get(statistic))
    for detector, entry in (bucket.get("drift") or {}).items():
        add("bucket_drift_windows", "counter", entry.get("windows"), ("detector", detector))
        add("bucket_drift_drifted", "counter", entry.get("drifted"), ("detector", detector))
        add("bucket_drift_min_p_value", "gauge", entry.get("min_p_value"), ("detector", detector))
    for detector, entry in (bucket.get("outliers") or {}).items():
        add("bucket_outlier_instances", "counter", entry.get("instances"), ("detector", detector))
        add("bucket_outliers", "counter", entry.get("outliers"), ("detector", detector))
    return out
