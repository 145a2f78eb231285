"""Per-feature drift gauges show the latest window's worst features only, and the detector's own series."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.analysis.feature_gauges import ALL_FEATURES, WorstFeatureGauges
from sidecar.messages.results import FeatureStat


def feature(name: str, adjusted: float, effect: float) -> FeatureStat:
    return FeatureStat(name, "numeric", 0.5, adjusted, adjusted, effect, adjusted < 0.05, {}, {})


def samples(registry: CollectorRegistry) -> dict[tuple[str, str, str, str], float]:
    """(metric, model, detector, feature) -> value, parsed back from the text exposition."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = sample.labels
            found[(sample.name, labels["model"], labels["detector"], labels["feature"])] = sample.value
    return found


def test_a_new_window_replaces_the_label_sets_of_the_previous_one() -> None:
    registry = CollectorRegistry()
    gauges = WorstFeatureGauges(registry)
    gauges.set("iris", "feature_drift", 0.001, None, [feature("a", 0.001, 1.5), feature("b", 0.2, 0.3)])
    gauges.set("iris", "mmd", 0.04, 0.12, [])
    gauges.set("iris", "feature_drift", 0.3, None, [feature("c", 0.3, 0.2)])
    assert samples(registry) == {
        ("sidecar_drift_p_value", "iris", "feature_drift", "c"): 0.3,
        ("sidecar_drift_effect_size", "iris", "feature_drift", "c"): 0.2,
        ("sidecar_drift_p_value", "iris", "feature_drift", ALL_FEATURES): 0.3,
        ("sidecar_drift_p_value", "iris", "mmd", ALL_FEATURES): 0.04,
        ("sidecar_drift_effect_size", "iris", "mmd", ALL_FEATURES): 0.12,
    }


def test_the_names_are_taken_in_the_registry() -> None:
    registry = CollectorRegistry()
    WorstFeatureGauges(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Gauge("sidecar_drift_effect_size", "again", registry=registry)
