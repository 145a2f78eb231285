"""Registry readings become Anodot 2.0 samples: counter increases, gauges, histogram averages and quantiles."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

from sidecar.export.anodot import (
    BucketAggregator,
    bucket_name,
    bucket_start_from_name,
    clean,
    histogram_quantile,
    merge,
    read_registry,
)
from sidecar.telemetry.metrics import RequestMetrics

from .anodot_format import check_sample

T0 = 1_714_564_800  # 2024-05-01T12:00:00Z


def find(samples: list[dict[str, Any]], what: str, **labels: str) -> dict[str, Any]:
    matches = [s for s in samples if s["properties"]["what"] == what
               and all(s["properties"].get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (what, labels, matches)
    return matches[0]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_counters_become_their_increase_over_the_bucket(registry: CollectorRegistry) -> None:
    drops = Counter("sidecar_outliers_total", "outliers", ["model"], registry=registry)
    drops.labels("iris").inc(5)
    before = read_registry(registry)
    drops.labels("iris").inc(3)
    drops.labels("wine").inc(2)
    samples = BucketAggregator().samples(before, read_registry(registry), T0)
    assert find(samples, "outliers", model="iris") == {
        "properties": {"what": "outliers", "target_type": "counter", "ver": "1", "model": "iris"},
        "tags": {"source": ["tfs-sidecar"]}, "timestamp": T0, "value": 3.0}
    assert find(samples, "outliers", model="wine")["value"] == 2.0
    for sample in samples:
        check_sample(sample)


def test_a_counter_that_went_down_counts_its_new_value(registry: CollectorRegistry) -> None:
    counter = Counter("sidecar_restarts_total", "r", registry=registry)
    counter.inc(10)
    before = read_registry(registry)
    registry.unregister(counter)
    Counter("sidecar_restarts_total", "r", registry=registry).inc(4)
    assert find(BucketAggregator().samples(before, read_registry(registry), T0), "restarts")["value"] == 4.0


def test_gauges_are_their_value_at_the_end_of_the_bucket(registry: CollectorRegistry) -> None:
    p_value = Gauge("sidecar_drift_p_value", "p", ["model", "feature"], registry=registry)
    p_value.labels("iris", "petal.length").set(0.03)
    Gauge("sidecar_nan_gauge", "nan", registry=registry).set(float("nan"))
    samples = BucketAggregator().samples({}, read_registry(registry), T0)
    sample = find(samples, "drift_p_value")
    assert sample["properties"] == {"what": "drift_p_value", "target_type": "gauge", "ver": "1", "model": "iris",
                                    "feature": "petal_length"}
    assert sample["value"] == 0.03
    assert not [s for s in samples if s["properties"]["what"] == "nan_gauge"]  # NaN is never sent


def test_histograms_give_count_average_and_quantiles_of_the_bucket_only(registry: CollectorRegistry) -> None:
    latency = Histogram("sidecar_latency_seconds", "l", ["model"], buckets=(0.1, 0.2, 0.4, 0.8),
                        registry=registry)
    for _ in range(100):
        latency.labels("iris").observe(0.7)  # before the bucket: must not leak into it
    before = read_registry(registry)
    for value in [0.05] * 50 + [0.15] * 40 + [0.3] * 10:
        latency.labels("iris").observe(value)
    samples = BucketAggregator().samples(before, read_registry(registry), T0)
    assert find(samples, "latency_seconds_count")["value"] == 100.0
    assert find(samples, "latency_seconds_count")["properties"]["target_type"] == "counter"
    average = find(samples, "latency_seconds_avg")
    assert average["value"] == pytest.approx((0.05 * 50 + 0.15 * 40 + 0.3 * 10) / 100)
    assert average["properties"]["unit"] == "seconds" and average["properties"]["target_type"] == "gauge"
    assert find(samples, "latency_seconds_p50")["value"] == pytest.approx(0.1)
    assert find(samples, "latency_seconds_p90")["value"] == pytest.approx(0.2)
    assert find(samples, "latency_seconds_p99")["value"] == pytest.approx(0.2 + 0.2 * 9 / 10)
    for sample in samples:
        check_sample(sample)


def test_a_bucket_without_observations_has_a_zero_count_and_no_average(registry: CollectorRegistry) -> None:
    Histogram("sidecar_idle_seconds", "i", registry=registry).observe(1.0)
    reading = read_registry(registry)
    samples = BucketAggregator().samples(reading, reading, T0)
    assert find(samples, "idle_seconds_count")["value"] == 0.0
    assert [s["properties"]["what"] for s in samples] == ["idle_seconds_count"]


def test_summaries_give_count_average_and_their_quantiles(registry: CollectorRegistry) -> None:
    summary = Summary("sidecar_score", "s", registry=registry)
    before = read_registry(registry)
    summary.observe(2.0)
    summary.observe(4.0)
    samples = BucketAggregator().samples(before, read_registry(registry), T0)
    assert find(samples, "score_count")["value"] == 2.0
    assert find(samples, "score_avg")["value"] == 3.0


def test_the_request_collector_of_the_proxies_is_exported(registry: CollectorRegistry) -> None:
    requests = RequestMetrics()
    registry.register(requests)
    before = read_registry(registry)
    for _ in range(4):
        requests.record("iris", "", "rest", "predict", "200", 0.004, 0.003, 100, 20)
    samples = BucketAggregator().samples(before, read_registry(registry), T0)
    assert find(samples, "requests", model="iris", protocol="rest", method="predict", code="200")["value"] == 4.0
    assert find(samples, "request_duration_seconds_avg", model="iris")["value"] == pytest.approx(0.004)
    assert find(samples, "request_size_bytes_avg", model="iris")["properties"]["unit"] == "bytes"
    for sample in samples:
        check_sample(sample)


def test_only_sidecar_families_are_read(registry: CollectorRegistry) -> None:
    Counter("other_total", "o", registry=registry).inc()
    Counter("sidecar_mine_total", "m", registry=registry).inc()
    assert set(read_registry(registry)) == {"sidecar_mine"}


def test_property_values_are_cleaned_to_anodots_rules(registry: CollectorRegistry) -> None:
    gauge = Gauge("sidecar_feature_mean", "f", ["model", "feature"], registry=registry)
    gauge.labels("my model=v1.2", "").set(1.0)
    gauge.labels("x" * 200, "héllo wörld").set(2.0)
    samples = BucketAggregator().samples({}, read_registry(registry), T0)
    props = [s["properties"] for s in samples]
    assert props[0]["model"] == "my_model_v1_2" and "feature" not in props[0]  # an empty label is no label
    assert props[1]["model"] == "x" * 150 and props[1]["feature"] == "h_llo_w_rld"
    for sample in samples:
        check_sample(sample)


def test_static_properties_are_added_and_colliding_labels_renamed(registry: CollectorRegistry) -> None:
    Gauge("sidecar_thing", "t", ["unit", "env"], registry=registry).labels("u", "label-env").set(1.0)
    (sample,) = BucketAggregator(static=(("env", "prod"), ("cluster", "eu.1"))).samples({}, read_registry(registry),
                                                                                         T0)
    assert sample["properties"] == {"what": "thing", "target_type": "gauge", "ver": "1", "env": "prod",
                                    "cluster": "eu_1", "label_unit": "u", "label_env": "label-env"}


def test_samples_with_more_than_twenty_properties_are_skipped(registry: CollectorRegistry) -> None:
    names = [f"l{i}" for i in range(18)]
    Gauge("sidecar_wide", "w", names, registry=registry).labels(*names).set(1.0)
    Gauge("sidecar_narrow", "n", names[:16], registry=registry).labels(*names[:16]).set(1.0)
    aggregator = BucketAggregator()
    samples = aggregator.samples({}, read_registry(registry), T0)
    assert [s["properties"]["what"] for s in samples] == ["narrow"]
    assert aggregator.skipped == 1


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = [(1.0, 10.0), (2.0, 20.0), (float("inf"), 20.0)]
    assert histogram_quantile(0.5, buckets) == 1.0
    assert histogram_quantile(0.75, buckets) == 1.5
    assert histogram_quantile(0.5, [(1.0, 0.0), (float("inf"), 4.0)]) == 1.0  # in +Inf: the highest bound


def test_bucket_file_names_are_iso_8601_and_read_back() -> None:
    assert bucket_name(T0) == "anodot-20240501T120000Z.json"
    assert bucket_start_from_name("anodot-20240501T120000Z.json") == T0
    assert bucket_start_from_name("anodot-20240501T120000Z.json.tmp") is None


def test_merging_a_bucket_written_twice_adds_counters_and_keeps_the_latest_gauges() -> None:
    def sample(what: str, kind: str, value: float) -> dict[str, Any]:
        return {"properties": {"what": what, "target_type": kind}, "timestamp": T0, "value": value}

    merged = merge([sample("a", "counter", 2.0), sample("g", "gauge", 1.0)],
                   [sample("a", "counter", 3.0), sample("g", "gauge", 7.0), sample("b", "counter", 1.0)])
    assert [(s["properties"]["what"], s["value"]) for s in merged] == [("a", 5.0), ("g", 7.0), ("b", 1.0)]


def test_clean_replaces_forbidden_characters() -> None:
    assert clean("a.b=c d", 150) == "a_b_c_d"
    assert clean("", 150) == "empty"
