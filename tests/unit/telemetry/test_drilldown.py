"""The drill-down merges the shadow sender's call counts with the analysis's comparison: under the served model's
name for a version analysed apart, and with the analysis off."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.analysis.monitor import MonitorStore
from sidecar.config import from_mapping
from sidecar.messages.results import DIFF_BUCKETS, ShadowBatch, bucket_counts
from sidecar.shadow.sender import ShadowSender
from sidecar.telemetry.drilldown import DrillDown


class Analysis:
    """The analysis pool's side of the drill-down, over a real monitor store."""

    def __init__(self, store: MonitorStore) -> None:
        self.store = store

    def monitor(self, model: str, extremes: bool = False) -> dict[str, Any] | None:
        return self.store.snapshot(model, extremes)

    def models(self) -> list[str]:
        return self.store.list_models()


def sender_with_calls() -> ShadowSender:
    settings = from_mapping({"shadow_rest": "http://127.0.0.1:1", "shadow_name": "next"}).shadow
    sender = ShadowSender(settings, CollectorRegistry())
    for _ in range(3):
        sender.count("iris", "next", "ok")
    return sender


def test_with_the_analysis_off_the_shadows_calls_are_still_shown() -> None:
    view = DrillDown(None, None, sender_with_calls()).model("iris")
    assert view is not None and view["shadows"]["next"]["calls"]["requests"] == {"ok": 3}
    assert DrillDown(None, None, sender_with_calls()).model("digits") is None


def test_a_version_analysed_apart_shows_its_models_calls_beside_its_comparison() -> None:
    store = MonitorStore()
    empty = bucket_counts([], DIFF_BUCKETS)
    store.apply(ShadowBatch("iris@1", "next", "classification", 4, 3, 0, {("0", "0"): 3, ("0", "1"): 1}, empty,
                            empty, 0.75, 4))
    view = DrillDown(Analysis(store), None, sender_with_calls()).model("iris@1")
    assert view is not None
    entry = view["shadows"]["next"]
    assert entry["compared_instances"] == 4
    assert entry["calls"]["requests"] == {"ok": 3} and entry["calls"]["of_model"] == "iris"
