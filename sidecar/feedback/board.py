"""Every model's quality, fed one join at a time: the bridge between joins and the per-model windows."""

from __future__ import annotations

from sidecar.feedback.join import Join
from sidecar.feedback.quality import ModelQuality
from sidecar.feedback.tasks import REGRESSION
from sidecar.telemetry.metrics import ModelLabels


class QualityBoard:
    """Per-model quality keyed by the bounded model label; also remembers what each `auto` model turned out to be."""

    def __init__(self, window: int, class_cap: int, model_label_cap: int) -> None:
        self.window = window
        self.class_cap = class_cap
        self.models = ModelLabels(model_label_cap)
        self.qualities: dict[str, ModelQuality] = {}
        self.auto_tasks: dict[str, str] = {}

    def record(self, join: Join) -> None:
        """Count one joined instance (already deduplicated)."""
        self.auto_tasks.setdefault(join.model, join.task)
        label = self.models(join.model)
        quality = self.qualities.get(label)
        if quality is None:
            quality = self.qualities[label] = ModelQuality(self.window, self.class_cap)
        if join.task == REGRESSION:
            quality.add_regression(float(join.truth), float(join.predicted))
        else:
            quality.add_classification(join.task, str(join.truth), str(join.predicted))

    def get(self, model: str) -> ModelQuality | None:
        return self.qualities.get(model)
