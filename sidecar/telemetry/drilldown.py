"""The monitor drill-down's answers (`GET /v1/monitor`, `GET /v1/monitor/{model}`): what the analysis knows of a
model, merged with what feedback says of its quality."""

from __future__ import annotations

from typing import Any, Protocol


class AnalysisView(Protocol):
    def monitor(self, model: str, extremes: bool = False) -> dict[str, Any] | None: ...

    def models(self) -> list[str]: ...


class QualityView(Protocol):
    def quality_snapshot(self, model: str) -> dict[str, Any] | None: ...


class ShadowView(Protocol):
    def snapshot(self, model: str) -> dict[str, Any] | None: ...


class ImportanceView(Protocol):
    def snapshot(self, model: str) -> dict[str, Any] | None: ...


class ExplainView(Protocol):
    def snapshot(self, name: str) -> dict[str, Any] | None: ...


class DrillDown:
    """Either side may be absent (analysis or feedback turned off); `shadows` is the shadow sender, when one runs.

    A model with shadows gets, per shadow, the sender's numbers under `calls` (outcomes, both sides' error rates
    and latencies on the mirrored calls) next to the analysis's comparison, and under `quality` the feedback
    quality of the primary and of the shadow on the same instances; each version compared with its baseline gets
    its feedback quality too. The sender counts calls per served model: a version (`iris@1`) shows its model's
    calls, marked `of_model`; with the analysis off, a model with shadow calls still has a drill-down."""

    def __init__(self, analysis: AnalysisView | None, quality: QualityView | None,
                 shadows: ShadowView | None = None, importance: ImportanceView | None = None,
                 explanations: ExplainView | None = None) -> None:
        self.analysis = analysis
        self.explanations = explanations
        self.quality = quality
        self.shadows = shadows
        self.importance = importance

    def model(self, name: str, extremes: bool = False) -> dict[str, Any] | None:
        """The analysis snapshot with the feedback quality under `quality`; None when neither knows the model.
        `extremes`: feature summaries keep their min and max (single raw input values)."""
        snapshot = self.analysis.monitor(name, extremes) if self.analysis is not None else None
        quality = self.quality.quality_snapshot(name) if self.quality is not None else None
        served = name.rpartition("@")[0] or name  # the sender counts a served model's calls, all versions together
        calls = self.shadows.snapshot(served) if self.shadows is not None else None
        importance = self.importance.snapshot(name) if self.importance is not None else None
        if snapshot is None and quality is None and calls is None and importance is None:
            return None
        merged: dict[str, Any] = dict(snapshot or {"model": name})
        if quality is not None:
            merged["quality"] = quality
        shadows: dict[str, Any] = {shadow: dict(entry) for shadow, entry in merged.get("shadows", {}).items()}
        for shadow, entry in (calls or {}).items():
            shadows.setdefault(shadow, {})["calls"] = entry if served == name else {**entry, "of_model": served}
        for shadow, entry in shadows.items():
            entry["quality"] = {"primary": quality, "shadow": self._quality(f"{name}~{shadow}")}
            explained = self.importance.snapshot(f"{served}~{shadow}") if self.importance is not None else None
            if explained is not None:  # the shadow model's own, on the primary's rows
                entry["feature_importance"] = explained
        if shadows:
            merged["shadows"] = shadows
        for version, entry in merged.get("versions", {}).items():
            entry["quality"] = {"version": self._quality(version), "baseline": self._quality(entry["baseline"])}
        if importance is not None:
            importance["drifted"] = drifted_by_importance(merged.get("detectors", {}), importance.get("features", []))
            merged["feature_importance"] = importance
        explained = self.explanations.snapshot(name) if self.explanations is not None else None
        if explained is not None:  # `:explain`'s background, and why it is the model's when it is not this name's
            merged["explain"] = explained
        return merged

    def _quality(self, name: str) -> dict[str, Any] | None:
        return self.quality.quality_snapshot(name) if self.quality is not None else None

    def models(self) -> list[str]:
        return sorted(self.analysis.models()) if self.analysis is not None else []


def drifted_by_importance(detectors: dict[str, Any], importance: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The features the latest windows found drifted, with their importance to the predictions (recent traffic and
    reference), the most important first: a drifted feature the model hardly uses matters less than one it leans on."""
    known = {item["feature"]: item for item in importance}
    drifted: dict[str, dict[str, Any]] = {}
    for detector, window in sorted(detectors.items()):
        for feature in window.get("features", []):
            if not feature.get("drift"):
                continue
            entry = drifted.setdefault(feature["name"], {
                "feature": feature["name"], "detectors": [], "p_value": feature.get("adjusted_p_value"),
                "importance_recent": known.get(feature["name"], {}).get("recent"),
                "importance_reference": known.get(feature["name"], {}).get("reference")})
            entry["detectors"].append(detector)
    return sorted(drifted.values(), key=lambda item: -max(item["importance_recent"] or 0.0,
                                                         item["importance_reference"] or 0.0))
