"""Results into metrics, the drill-down and the log: drift is logged when it starts and when it clears."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from sidecar.analysis.applying import ResultSink
from sidecar.analysis.metrics import AnalysisMetrics
from sidecar.analysis.monitor import MonitorStore
from sidecar.messages.results import DriftWindow, FeatureStat, PackedFeatures


def window(drifted: bool, p_value: float) -> DriftWindow:
    stat = FeatureStat("x[1]", "numeric", 0.4, p_value, p_value, 1.3, drifted, {}, {})
    return DriftWindow("iris", "feature_drift", {"index": 1}, drifted, p_value, 0.05, None,
                       PackedFeatures.of([stat], 20), 0.01)


def test_drift_is_logged_when_it_starts_and_when_it_clears(caplog: pytest.LogCaptureFixture) -> None:
    sink = ResultSink(AnalysisMetrics(CollectorRegistry(), 20), MonitorStore(), None)
    with caplog.at_level(logging.INFO, logger="sidecar.analysis.applying"):
        for drifted, p_value in [(False, 0.4), (True, 1e-5), (True, 1e-6), (False, 0.3), (False, 0.5)]:
            sink.apply(window(drifted, p_value))
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["model iris: drift detected by feature_drift (p=1e-05); most drifted: x[1] (p=1e-05)",
                        "model iris: drift cleared for feature_drift (p=0.3)"]
    assert [record.levelname for record in caplog.records] == ["WARNING", "INFO"]
