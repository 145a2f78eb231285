"""Metrics of the exporters, registered on the registry passed in.

- `sidecar_export_events_total{sink,outcome}`: events per sink that were sent, failed (given up after retries,
  rejected by the receiver, or lost in flight at shutdown) or dropped (queue full, or still queued when the
  shutdown deadline passed).
- `sidecar_export_queue_depth{sink}`: events queued or in flight.
- `sidecar_export_delivery_seconds{sink}`: time from enqueue to delivered.
- `sidecar_export_anodot_samples_total{outcome}`: Anodot samples written to files, posted, or failed to post.

Event counts and depths are plain integers kept by the sinks and read at scrape time (like the request metrics):
a dead sink drops every event, and a locked Prometheus counter per drop would cost more than the drop itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

OUTCOMES = ("sent", "failed", "dropped")
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SinkView(Protocol):
    """What the collector reads from a sink at scrape time."""

    name: str
    sent: int
    failed: int

    @property
    def dropped(self) -> int: ...

    @property
    def depth(self) -> int: ...


class ExportMetrics(Collector):
    """Payload log metrics; one instance per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sinks: list[SinkView] = []
        self.delivery = Histogram("sidecar_export_delivery_seconds", "Time from an event's enqueue to its "
                                  "delivery to the sink.", ["sink"], buckets=DELIVERY_BUCKETS, registry=registry)
        registry.register(self)

    def add(self, sink: SinkView) -> None:
        self.sinks.append(sink)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        events = CounterMetricFamily("sidecar_export_events", "Payload log events per sink and outcome (sent; "
                                     "failed after retries, rejected or cut off at shutdown; dropped because the "
                                     "queue was full or the shutdown deadline passed).", labels=["sink", "outcome"])
        depth = GaugeMetricFamily("sidecar_export_queue_depth", "Payload log events queued or in flight per sink.",
                                  labels=["sink"])
        for sink in list(self.sinks):
            events.add_metric([sink.name, "sent"], sink.sent)
            events.add_metric([sink.name, "failed"], sink.failed)
            events.add_metric([sink.name, "dropped"], sink.dropped)
            depth.add_metric([sink.name], sink.depth)
        yield events
        yield depth


class AnodotMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        samples = Counter("sidecar_export_anodot_samples_total", "Anodot samples written to bucket files, posted "
                          "to the API, or failed to post (kept in the files for replay).", ["outcome"],
                          registry=registry)
        self.written = samples.labels("written")
        self.posted = samples.labels("posted")
        self.failed = samples.labels("failed")
