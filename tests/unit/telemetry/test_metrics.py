"""Request metrics aggregate on the hot path and export standard families at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.capture.ring import CaptureRing
from sidecar.messages.records import CaptureRecord
from sidecar.telemetry.metrics import (
    OTHER_MODELS,
    OTHER_VERSIONS,
    VERSIONS_PER_MODEL,
    CaptureMetrics,
    ModelLabels,
    RequestMetrics,
    SeriesLabels,
    add_process_metrics,
    new_registry,
)


def samples(registry: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_requests_and_histograms_after_a_known_number_of_calls() -> None:
    registry = new_registry()
    metrics = RequestMetrics()
    registry.register(metrics)
    for duration in (0.0004, 0.003, 0.003, 2.0):
        metrics.record("iris", "", "rest", "predict", "200", duration, duration / 2, 1000, 300)
    metrics.record("iris", "", "grpc", "predict", "NOT_FOUND", 0.001, 0.001, 10, 0)
    values = samples(registry)
    labels = (("code", "200"), ("method", "predict"), ("model", "iris"), ("protocol", "rest"), ("version", ""))
    assert values[("sidecar_requests_total", labels)] == 4
    short = (("method", "predict"), ("model", "iris"), ("protocol", "rest"), ("version", ""))
    assert values[("sidecar_request_duration_seconds_count", short)] == 4
    assert values[("sidecar_request_duration_seconds_sum", short)] == 0.0004 + 0.003 + 0.003 + 2.0
    assert values[("sidecar_request_duration_seconds_bucket", (("le", "0.0005"), *short))] == 1
    assert values[("sidecar_request_duration_seconds_bucket", (("le", "0.005"), *short))] == 3
    assert values[("sidecar_request_duration_seconds_bucket", (("le", "+Inf"), *short))] == 4
    assert values[("sidecar_request_size_bytes_sum", short)] == 4000
    grpc = (("code", "NOT_FOUND"), ("method", "predict"), ("model", "iris"), ("protocol", "grpc"), ("version", ""))
    assert values[("sidecar_requests_total", grpc)] == 1


def test_model_names_beyond_the_cap_fold_into_one_label() -> None:
    labels = ModelLabels(cap=2)
    assert [labels(name) for name in ("a", "b", "c", "d", "a")] == ["a", "b", OTHER_MODELS, OTHER_MODELS, "a"]


def test_versions_beyond_the_per_model_cap_fold_into_one_label() -> None:
    series = SeriesLabels(ModelLabels(cap=1))
    names = [series("a", str(n)) for n in range(VERSIONS_PER_MODEL + 2)]
    assert names[:VERSIONS_PER_MODEL] == [("a", str(n)) for n in range(VERSIONS_PER_MODEL)]
    assert names[VERSIONS_PER_MODEL:] == [("a", OTHER_VERSIONS)] * 2
    assert series("a", "0") == ("a", "0")
    assert series("b", "1") == (OTHER_MODELS, "1")  # a folded model keeps its versions, bounded the same way


def test_capture_metrics_report_ring_state_and_drops() -> None:
    registry = new_registry()
    ring = CaptureRing(max_records=2, max_bytes=10**6)
    registry.register(CaptureMetrics(ring, lambda: 7, ModelLabels(1)))
    for n, model in enumerate(["a", "b", "c", "d"]):
        ring.append(CaptureRecord(str(n), 0.0, model, "", "", "rest", "tfserving", "predict", b"xx", b"y", 200, 0.0))
    values = samples(registry)
    assert values[("sidecar_capture_ring_records", ())] == 2
    assert values[("sidecar_capture_ring_bytes", ())] == 6
    assert values[("sidecar_capture_records_total", ())] == 4
    assert values[("sidecar_capture_drained_records_total", ())] == 7
    assert values[("sidecar_capture_dropped_total", (("model", "a"),))] == 1
    assert values[("sidecar_capture_dropped_total", (("model", OTHER_MODELS),))] == 1


def test_shadow_answers_are_counted_apart_from_the_exchanges_captured() -> None:
    registry = new_registry()
    ring = CaptureRing(max_records=10, max_bytes=10**6)
    registry.register(CaptureMetrics(ring, lambda: 0, ModelLabels(5)))
    exchange = CaptureRecord("1", 0.0, "iris", "", "", "rest", "tfserving", "predict", b"xx", b"y", 200, 0.0)
    ring.append(exchange)
    ring.append(exchange._replace(shadow="next", primary_response=b"y"))
    values = samples(registry)
    assert values[("sidecar_capture_records_total", ())] == 1
    assert values[("sidecar_capture_shadow_records_total", ())] == 1


def test_process_metrics_are_the_standard_process_and_python_ones() -> None:
    registry = add_process_metrics(new_registry())
    assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
    assert (registry.get_sample_value("process_cpu_seconds_total") or 0) > 0
    assert registry.get_sample_value("python_gc_collections_total", {"generation": "0"}) is not None
    assert any(metric.name == "python_info" for metric in registry.collect())


def test_every_model_seen_has_a_dropped_series_from_the_start() -> None:
    registry = new_registry()
    models = ModelLabels(10)
    registry.register(CaptureMetrics(CaptureRing(max_records=10, max_bytes=10**6), lambda: 0, models))
    models("iris")  # the request metrics saw the model; nothing was dropped
    assert samples(registry)[("sidecar_capture_dropped_total", (("model", "iris"),))] == 0
