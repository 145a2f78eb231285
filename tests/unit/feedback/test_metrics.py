"""The feedback collector: Prometheus names, bounded labels, and gauges computed at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.feedback.metrics import FeedbackCollector, FeedbackCounts
from sidecar.feedback.quality import ModelQuality
from sidecar.telemetry.metrics import new_registry


def scrape(counts: FeedbackCounts, models: dict[str, ModelQuality]) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = new_registry()
    registry.register(FeedbackCollector(counts, models, lambda: {"sidecar_feedback_pending_instances": 4}))
    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_every_name_has_the_sidecar_prefix_and_counters_end_in_total() -> None:
    counts = FeedbackCounts()
    counts.outcome("m", "joined", 3)
    classifier = ModelQuality(10, 5)
    classifier.add_classification("binary", "1", "0")
    regressor = ModelQuality(10, 5)
    regressor.add_regression(1.0, 3.0)
    samples = scrape(counts, {"c": classifier, "r": regressor})
    assert all(name.startswith("sidecar_") for name in samples)
    for name in ("sidecar_feedback_total", "sidecar_confusion_total", "sidecar_quality_joined_total",
                 "sidecar_quality_correct_total", "sidecar_quality_abs_error_sum_total",
                 "sidecar_quality_squared_error_sum_total"):
        assert name in samples, name
    assert samples["sidecar_quality_abs_error_sum_total"] == [({"model": "r"}, 2.0)]
    assert samples["sidecar_quality_squared_error_sum_total"] == [({"model": "r"}, 4.0)]
    assert samples["sidecar_quality_rmse"] == [({"model": "r"}, 2.0)]
    assert samples["sidecar_quality_correct_total"] == [({"model": "c"}, 0.0)]
    assert samples["sidecar_feedback_pending_instances"] == [({}, 4.0)]


def test_classes_beyond_the_cap_fold_into_other_and_get_no_per_class_gauges() -> None:
    quality = ModelQuality(100, class_cap=2)
    for truth, predicted in [("a", "a"), ("b", "b"), ("c", "c"), ("d", "a")]:
        quality.add_classification("multiclass", truth, predicted)
    samples = scrape(FeedbackCounts(), {"m": quality})
    confusion = {(labels["truth"], labels["predicted"]): value for labels, value in samples["sidecar_confusion_total"]}
    assert confusion == {("a", "a"): 1, ("b", "b"): 1, ("__other__", "__other__"): 1, ("__other__", "a"): 1}
    classes = {labels["class"] for labels, _ in samples["sidecar_quality_precision"]}
    assert classes == {"a", "b", "macro"}
    macro = dict((labels["class"], value) for labels, value in samples["sidecar_quality_recall"])["macro"]
    assert macro == (1 + 1 + 1 + 0) / 4  # the macro average still covers every class in the window


def test_zero_instance_outcomes_are_not_counted() -> None:
    counts = FeedbackCounts()
    counts.outcome("m", "pending", 0)
    assert counts.outcomes == {}
