"""Where the workers' results go in the main process: the metrics, the drill-down store, the predictions hook and
the history hook (closed history buckets).

Telemetry never stops the analysis: a result that fails to apply is logged and the next one is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sidecar.analysis.metrics import AnalysisMetrics
from sidecar.analysis.monitor import MonitorStore
from sidecar.messages.results import DriftWindow, HistoryBucket, Result, StoredPredictions

log = logging.getLogger(__name__)
PredictionsHook = Callable[[StoredPredictions], None]
HistoryHook = Callable[[HistoryBucket], None]


class ResultSink:
    def __init__(self, metrics: AnalysisMetrics, store: MonitorStore, on_predictions: PredictionsHook | None,
                 on_history: HistoryHook | None = None) -> None:
        self.metrics = metrics
        self.store = store
        self.on_predictions = on_predictions
        self.on_history = on_history
        self._drifting: dict[tuple[str, str], bool] = {}  # (model, detector) -> the latest window drifted

    def apply(self, message: Result) -> None:
        try:
            if isinstance(message, StoredPredictions):
                if self.on_predictions is not None:
                    self.on_predictions(message)
                return
            if isinstance(message, HistoryBucket):
                if self.on_history is not None:
                    self.on_history(message)
                return
            if isinstance(message, DriftWindow):
                self._log_drift(message)
            self.metrics.apply(message)
            self.store.apply(message)
        except Exception:
            log.exception("applying an analysis result failed")

    def _log_drift(self, window: DriftWindow) -> None:
        """One line when a model's detector starts or stops seeing drift, not one per window."""
        key = (window.model, window.detector)
        if self._drifting.get(key, False) == window.drift:
            return
        self._drifting[key] = window.drift
        if window.drift:
            worst = ", ".join(f"{item.name} (p={item.adjusted_p_value:.2g})" for item in window.features.worst[:3])
            log.warning("model %s: drift detected by %s (p=%.3g)%s", window.model, window.detector, window.p_value,
                        f"; most drifted: {worst}" if worst else "")
        else:
            log.info("model %s: drift cleared for %s (p=%.3g)", window.model, window.detector, window.p_value)
