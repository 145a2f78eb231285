"""A Prometheus histogram whose observations are counted in the analysis workers and added here as bucket counts.

Why not prometheus-client's `Histogram`: it takes one value per `observe` call, about 1.5 us each on the main
process's GIL. Observing a batch's capture-to-result lags and a result's outlier scores one by one took 50-160 us
of the event loop per result (bench/analysis_timeline.py), and to bound that the workers had sent only a sample of
the values, so the histograms counted a sample, not the instances. Here a worker counts every value into the
buckets (`results.count`) and the event loop adds the counts, whatever their number, in one step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar.messages.results import Counted


class CountedHistogram(Collector):
    """Series by label values, each holding bucket counts and a sum; exposed as a Prometheus histogram. A histogram
    without labels shows its one series at zero from the start, as prometheus-client's does."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = [*map(floatToGoString, buckets), "+Inf"]
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()  # the scrape may run on another thread than the adds
        if not self.labelnames:
            self._series[()] = ([0] * len(self.bounds), [0.0])
        registry.register(self)

    def add(self, labels: tuple[str, ...], counted: Counted) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels}")
        if len(counted.counts) != len(self.bounds):
            raise ValueError(f"{self.name}: expected {len(self.bounds)} bucket counts, got {len(counted.counts)}")
        with self._lock:
            counts, total = self._series.setdefault(labels, ([0] * len(self.bounds), [0.0]))
            for index, number in enumerate(counted.counts):
                counts[index] += number
            total[0] += counted.total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(labels, list(counts), total[0]) for labels, (counts, total) in self._series.items()]
        for labels, counts, total in series:
            cumulative = 0
            buckets = []
            for bound, number in zip(self.bounds, counts, strict=True):
                cumulative += number
                buckets.append((bound, float(cumulative)))
            family.add_metric(list(labels), buckets, total)
        yield family
