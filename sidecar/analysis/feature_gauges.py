"""`sidecar_drift_p_value` and `sidecar_drift_effect_size`: the latest window's worst features, per model and detector.

Why a collector and not two prometheus-client `Gauge`s: the worst features of a stable stream change from window to
window (their p-values are noise), so each window removed about twenty label sets and made as many new ones, about
220 us of the event loop per 120-feature window. Here applying a window only keeps its worst features; the
samples are made when Prometheus scrapes. Each detector also has the series `feature="__all__"`: its own p-value
and, for p-value gauges' twin, its distance (MMD) when it has one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.messages.results import FeatureStat

ALL_FEATURES = "__all__"
LABELS = ["model", "detector", "feature"]
P_VALUE = ("sidecar_drift_p_value", "Latest window's p-value after multiple-testing correction, for the worst "
           "features (feature=\"__all__\": the detector's).")
EFFECT_SIZE = ("sidecar_drift_effect_size", "Latest window's effect size for the worst features "
               "(feature=\"__all__\": the detector's distance).")


class _Latest:
    __slots__ = ("distance", "p_value", "worst")

    def __init__(self, p_value: float, distance: float | None, worst: list[FeatureStat]) -> None:
        self.p_value = p_value
        self.distance = distance
        self.worst = worst


class WorstFeatureGauges(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._latest: dict[tuple[str, str], _Latest] = {}
        self._lock = threading.Lock()  # the scrape may run on another thread than `set`
        registry.register(self)

    def set(self, model: str, detector: str, p_value: float, distance: float | None,
            worst: list[FeatureStat]) -> None:
        """The latest window of `model` and `detector`: its p-value, its distance (or None) and its worst features
        (their label sets replace the previous window's)."""
        with self._lock:
            self._latest[(model, detector)] = _Latest(p_value, distance, worst)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(*P_VALUE, labels=LABELS)
        yield GaugeMetricFamily(*EFFECT_SIZE, labels=LABELS)

    def collect(self) -> Iterator[Metric]:
        p_values = GaugeMetricFamily(*P_VALUE, labels=LABELS)
        effects = GaugeMetricFamily(*EFFECT_SIZE, labels=LABELS)
        with self._lock:
            latest = list(self._latest.items())
        for (model, detector), window in latest:
            for item in window.worst:
                p_values.add_metric([model, detector, item.name], item.adjusted_p_value)
                effects.add_metric([model, detector, item.name], item.effect_size)
            p_values.add_metric([model, detector, ALL_FEATURES], window.p_value)
            if window.distance is not None:
                effects.add_metric([model, detector, ALL_FEATURES], window.distance)
        yield p_values
        yield effects
