"""Where the workers' results go in the main process: the metrics, the drill-down store and the predictions hook.

Telemetry never stops the analysis: a result that fails to apply is logged and the next one is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sidecar.analysis.metrics import AnalysisMetrics
from sidecar.analysis.monitor import MonitorStore
from sidecar.messages.results import Result, StoredPredictions

log = logging.getLogger(__name__)
PredictionsHook = Callable[[StoredPredictions], None]


class ResultSink:
    def __init__(self, metrics: AnalysisMetrics, store: MonitorStore, on_predictions: PredictionsHook | None) -> None:
        self.metrics = metrics
        self.store = store
        self.on_predictions = on_predictions

    def apply(self, message: Result) -> None:
        try:
            if isinstance(message, StoredPredictions):
                if self.on_predictions is not None:
                    self.on_predictions(message)
                return
            self.metrics.apply(message)
            self.store.apply(message)
        except Exception:
            log.exception("applying an analysis result failed")
