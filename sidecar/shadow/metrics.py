"""What the shadow sender counts: calls mirrored by outcome, both sides' latency on the mirrored calls, queues.

Also the numbers the drill-down shows per model and shadow (`ShadowStats`): outcomes, the primary's failures among
the mirrored calls, and recent latencies of both sides for their percentiles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sidecar.telemetry.metrics import ModelLabels

OUTCOMES = ("ok", "error", "both_failed", "timeout", "unreachable", "oversize", "dropped", "unsupported")
FAILED = ("error", "timeout", "unreachable", "oversize")  # the shadow's fault
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECENT_LATENCIES = 1000  # per side, kept for the drill-down's percentiles


class ShadowMetrics:
    """The shadow sender's metrics. Outcomes are plain counts in `stats` (a counter's labelled child costs a lock
    and a lookup per call, and a dead shadow's calls are counted at the request rate), read at scrape time."""

    def __init__(self, registry: CollectorRegistry, model_label_cap: int) -> None:
        self.models = ModelLabels(model_label_cap)
        self.stats: dict[tuple[str, str], ShadowStats] = {}  # (model label, shadow) -> its numbers
        r = registry
        r.register(_Outcomes(self.stats))
        self.primary_errors = Counter("sidecar_shadow_primary_errors", "Mirrored calls the primary model server "
                                      "answered with an error (next to the shadow's errors).", ["model", "shadow"],
                                      registry=r)
        self.duration = Histogram("sidecar_shadow_duration_seconds", "Latency of the mirrored calls: the shadow's "
                                  "(side=shadow) and the primary's on the same calls (side=primary).",
                                  ["model", "shadow", "side"], buckets=LATENCY_BUCKETS, registry=r)
        self.queued = Gauge("sidecar_shadow_queue_records", "Calls waiting to be mirrored.", ["shadow"], registry=r)
        self.inflight = Gauge("sidecar_shadow_inflight_requests", "Mirrored calls in flight.", ["shadow"],
                              registry=r)
        self.sample = Gauge("sidecar_shadow_sample_ratio", "Share of inference calls mirrored to a shadow "
                            "(shadow_sample; model=\"*\" for the global shadow's models).", ["model", "shadow"],
                            registry=r)
        self.threshold = Gauge("sidecar_shadow_agreement_threshold", "Agreement below which a shadow is flagged "
                               "(shadow_min_agreement).", registry=r)


class _Outcomes(Collector):
    def __init__(self, stats: dict[tuple[str, str], ShadowStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("sidecar_shadow_requests", "Inference calls mirrored to a shadow, by outcome "
                                     "(ok, error: the shadow answered an error, both_failed: an error on a call the "
                                     "primary failed too, timeout, unreachable, oversize: its "
                                     "answer exceeded the sidecar's size limits, dropped: its queue was full, "
                                     "unsupported: no shadow endpoint for the call's protocol).",
                                     labels=["model", "shadow", "outcome"])
        for (model, shadow), stats in list(self.stats.items()):
            for outcome, count in list(stats.outcomes.items()):
                family.add_metric([model, shadow, outcome], count)
        yield family


class ShadowStats:
    """The drill-down's numbers for one model and shadow."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.primary_errors = 0
        self.latencies: dict[str, deque[float]] = {"primary": deque(maxlen=RECENT_LATENCIES),
                                                   "shadow": deque(maxlen=RECENT_LATENCIES)}

    def snapshot(self) -> dict[str, Any]:
        sent = sum(count for outcome, count in self.outcomes.items() if outcome not in ("dropped", "unsupported"))
        failed = sum(self.outcomes.get(outcome, 0) for outcome in FAILED)
        return {
            "requests": dict(sorted(self.outcomes.items())),
            "error_rate": {"shadow": failed / sent if sent else None,
                           "primary": self.primary_errors / sent if sent else None},
            "latency_seconds": {side: _percentiles(list(values)) for side, values in self.latencies.items()},
        }


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {"count": len(ordered), **{name: ordered[min(last, int(q * len(ordered)))]
                                      for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}}
