"""History buckets in the Anodot files: metrics 2.0 samples with the registry's properties style, one set per
history bucket, stamped with the bucket's start; two buckets in one file stay apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.export.anodot_sink import AnodotExporter
from sidecar.export.settings import ExportSettings

from .anodot_format import check_sample

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z


def history_bucket(start: float, mean: float) -> dict[str, Any]:
    return {"start": start, "end": start + 30, "instances": 40, "requests": 4,
            "inputs": {"x[0]": {"kind": "numeric", "count": 40, "missing": 1, "mean": mean, "std": 1.0, "min": -2.0,
                                "p5": -1.5, "p50": 0.0, "p95": 1.5, "max": 2.0},
                       "color": {"kind": "categorical", "count": 40, "missing": 0, "levels": {"red": 30, "blue": 10}},
                       "x[2]": {"kind": "numeric", "count": 40, "missing": 0, "mean": 9.0}},
            "outputs": {"task": "classification", "classes": {"0": {"count": 25, "mean_probability": 0.6},
                                                              "1": {"count": 15, "mean_probability": 0.4}}},
            "labels": {"count": 10, "classes": {"0": 6, "1": 4}, "accuracy": 0.8, "f1": 0.75},
            "drift": {"feature_drift": {"windows": 1, "drifted": 1, "min_p_value": 0.001}},
            "outliers": {"mahalanobis": {"instances": 40, "outliers": 2}}}


async def test_the_bucket_file_carries_the_history_statistics(tmp_path: Path) -> None:
    queued = [("classifier@2", history_bucket(T0, 0.25)), ("classifier@2", history_bucket(T0 + 30, 0.5))]

    def history() -> list[tuple[str, dict[str, Any]]]:
        taken = list(queued)
        queued.clear()
        return taken

    now = [T0 + 5.0]
    exporter = AnodotExporter(ExportSettings(anodot_bucket=60.0), CollectorRegistry(), tmp_path,
                              clock=lambda: now[0], history=history, history_features=2)
    await exporter.start()
    now[0] = T0 + 60.0
    path = await exporter.close_bucket()
    await exporter.stop()
    samples = json.loads(path.read_text())
    for sample in samples:
        check_sample(sample)

    def find(what: str, **properties: str) -> list[tuple[int, float]]:
        return sorted((s["timestamp"], s["value"]) for s in samples if s["properties"]["what"] == what
                      and all(s["properties"].get(key) == value for key, value in properties.items()))

    assert find("bucket_input_mean", model="classifier_2", feature="x_0_") == [(T0, 0.25), (T0 + 30, 0.5)]
    mean = next(s for s in samples if s["properties"]["what"] == "bucket_input_mean")
    assert mean["properties"] == {"what": "bucket_input_mean", "target_type": "gauge", "ver": "1",
                                  "model": "classifier_2", "feature": "x_0_"}
    assert find("bucket_input_p95", feature="x_0_") == [(T0, 1.5), (T0 + 30, 1.5)]
    assert find("bucket_input_missing", feature="x_0_") == [(T0, 1.0), (T0 + 30, 1.0)]
    assert find("bucket_input_level_count", feature="color", level="red") == [(T0, 30.0), (T0 + 30, 30.0)]
    assert find("bucket_input_mean", feature="x_2_") == []  # beyond history_features
    assert find("bucket_output_class_count", **{"class": "0"}) == [(T0, 25.0), (T0 + 30, 25.0)]
    assert find("bucket_output_class_mean_probability", **{"class": "1"}) == [(T0, 0.4), (T0 + 30, 0.4)]
    assert find("bucket_label_accuracy") == [(T0, 0.8), (T0 + 30, 0.8)]
    assert find("bucket_label_class_count", **{"class": "1"}) == [(T0, 4.0), (T0 + 30, 4.0)]
    assert find("bucket_drift_min_p_value", detector="feature_drift") == [(T0, 0.001), (T0 + 30, 0.001)]
    assert find("bucket_outliers", detector="mahalanobis") == [(T0, 2.0), (T0 + 30, 2.0)]
    assert find("bucket_instances") == [(T0, 40.0), (T0 + 30, 40.0)]
