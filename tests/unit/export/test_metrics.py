"""Exporter metrics: Prometheus names, bounded labels, registered on the registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sidecar.export.metrics import AnodotMetrics, ExportMetrics


class FakeSinkState:
    """The counts a sink keeps (a real sink is exercised in test_http_sink / test_file_sink)."""

    name = "http"
    sent = 3
    failed = 0
    dropped = 1
    depth = 7


def test_payload_log_metrics_are_named_and_labelled_per_sink() -> None:
    registry = CollectorRegistry()
    metrics = ExportMetrics(registry)
    metrics.add(FakeSinkState())
    metrics.delivery.labels("http").observe(0.02)
    text = generate_latest(registry).decode()
    assert 'sidecar_export_events_total{outcome="sent",sink="http"} 3.0' in text
    assert 'sidecar_export_events_total{outcome="dropped",sink="http"} 1.0' in text
    assert 'sidecar_export_events_total{outcome="failed",sink="http"} 0.0' in text
    assert 'sidecar_export_queue_depth{sink="http"} 7.0' in text
    assert 'sidecar_export_delivery_seconds_bucket{le="0.025",sink="http"} 1.0' in text
    assert "# TYPE sidecar_export_queue_depth gauge" in text


def test_anodot_metrics_count_samples_by_outcome() -> None:
    registry = CollectorRegistry()
    metrics = AnodotMetrics(registry)
    metrics.written.inc(10)
    metrics.posted.inc(8)
    metrics.failed.inc(2)
    for outcome, value in (("written", 10), ("posted", 8), ("failed", 2)):
        assert registry.get_sample_value("sidecar_export_anodot_samples_total", {"outcome": outcome}) == value
