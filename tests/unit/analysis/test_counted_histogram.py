"""Histograms counted in the workers: bucket counts add up in the main process and read as any Prometheus histogram."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sidecar.analysis.counted_histogram import CountedHistogram
from sidecar.messages.results import bucket_counts

BOUNDS = (0.5, 1.0, 2.0)


def exposed(registry: CollectorRegistry) -> list[str]:
    """The text exposition without prometheus-client's `_created` sample (a time, which counted series leave out)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_added_counts_expose_exactly_what_observing_each_value_would() -> None:
    values = [0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 40.0]
    counted_registry, observed_registry = CollectorRegistry(), CollectorRegistry()
    counted = CountedHistogram("scores", "Scores.", ["model"], BOUNDS, registry=counted_registry)
    observed = Histogram("scores", "Scores.", ["model"], buckets=BOUNDS, registry=observed_registry)
    counted.add(("m",), bucket_counts(values[:3], BOUNDS))
    counted.add(("m",), bucket_counts(values[3:], BOUNDS))
    for value in values:
        observed.labels("m").observe(value)
    assert exposed(counted_registry) == exposed(observed_registry)


def test_a_histogram_without_labels_shows_zero_before_anything_is_added() -> None:
    registry = CollectorRegistry()
    CountedHistogram("lag_seconds", "Lag.", [], BOUNDS, registry=registry)
    assert registry.get_sample_value("lag_seconds_count") == 0
    assert registry.get_sample_value("lag_seconds_bucket", {"le": "+Inf"}) == 0


def test_counts_that_do_not_match_the_buckets_or_labels_are_refused() -> None:
    histogram = CountedHistogram("scores", "Scores.", ["model"], BOUNDS, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="bucket counts"):
        histogram.add(("m",), bucket_counts([1.0], (1.0,)))
    with pytest.raises(ValueError, match="labels"):
        histogram.add(("m", "extra"), bucket_counts([1.0], BOUNDS))


def test_its_name_is_taken_in_the_registry() -> None:
    registry = CollectorRegistry()
    CountedHistogram("scores", "Scores.", [], BOUNDS, registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("scores", "Scores.", registry=registry)
