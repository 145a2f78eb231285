"""The monitor drill-down's answers (`GET /v1/monitor`, `GET /v1/monitor/{model}`): what the analysis knows of a
model, merged with what feedback says of its quality."""

from __future__ import annotations

from typing import Any, Protocol


class AnalysisView(Protocol):
    def monitor(self, model: str, extremes: bool = False) -> dict[str, Any] | None: ...

    def models(self) -> list[str]: ...


class QualityView(Protocol):
    def quality_snapshot(self, model: str) -> dict[str, Any] | None: ...


class DrillDown:
    """Either side may be absent (analysis or feedback turned off)."""

    def __init__(self, analysis: AnalysisView | None, quality: QualityView | None) -> None:
        self.analysis = analysis
        self.quality = quality

    def model(self, name: str, extremes: bool = False) -> dict[str, Any] | None:
        """The analysis snapshot with the feedback quality under `quality`; None when neither knows the model.
        `extremes`: feature summaries keep their min and max (single raw input values)."""
        snapshot = self.analysis.monitor(name, extremes) if self.analysis is not None else None
        quality = self.quality.quality_snapshot(name) if self.quality is not None else None
        if snapshot is None and quality is None:
            return None
        merged: dict[str, Any] = dict(snapshot or {"model": name})
        if quality is not None:
            merged["quality"] = quality
        return merged

    def models(self) -> list[str]:
        return sorted(self.analysis.models()) if self.analysis is not None else []
