"""Which features drive each model now: every `importance_interval`, mean absolute KernelSHAP attribution per feature
over a sample of the model's recent traffic and over as many reference rows, computed in the explainer processes
(`kernel.importance`) like `:explain`, so the main process stays free of numpy and the model calls use the
explainers' own connections, never the proxy's.

The recent rows come from the analysis worker that owns the model: it keeps the latest `importance_rows` analysed
rows and saves them as `recent.npz` beside `reference.npz` (`sidecar.worker.recent` says why a file). Models are
explained one after another, each with what is left of the interval's budget of `importance_max_model_calls`
predict calls; a model the budget does not reach waits for the next interval and says so. Analysis names that are
not a served model (`model@version`, a shadow's `model~shadow`) are left out: their predict route is another one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.explain.kernel import ExplainError, ImportanceError, ImportanceJob, importance
from sidecar.explain.service import ExplainService, predict_path
from sidecar.messages.names import SHADOW_SEPARATOR, served_model
from sidecar.telemetry.metrics import ModelLabels
from sidecar.worker.settings import AnalysisSettings

log = logging.getLogger(__name__)
SAMPLES = ("reference", "recent")


class FeatureImportance:
    def __init__(self, settings: AnalysisSettings, explainer: ExplainService, models: Callable[[], list[str]],
                 registry: CollectorRegistry, model_label_cap: int = 100) -> None:
        self.settings = settings
        self.explainer = explainer
        self.models = models
        self.labels = ModelLabels(model_label_cap)
        self._found: dict[str, dict[str, Any]] = {}  # model -> its latest importance (or why there is none)
        self._outcomes: dict[str, str] = {}  # model -> the latest outcome, to log changes only
        self._task: asyncio.Task[None] | None = None
        self.runs = Counter("sidecar_feature_importance_runs", "Feature importance computations, by outcome (ok, "
                            "budget: left for the next interval, or the HTTP status of the error).",
                            ["model", "outcome"], registry=registry)
        self.model_calls = Counter("sidecar_feature_importance_model_calls", "Predict calls the feature importance "
                                   "made to the model (at most importance_max_model_calls per interval, all models "
                                   "together).", ["model"], registry=registry)
        registry.register(_ImportanceCollector(self))

    def start(self) -> None:
        settings = self.settings
        log.info("feature importance: every %gs, %d rows of each model's recent traffic and of its reference are "
                 "explained (KernelSHAP in the explainer processes), at most %d predict calls per interval",
                 settings.importance_interval, settings.importance_rows, settings.importance_max_model_calls)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="feature-importance")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.importance_interval)
            try:
                await self.run_once()
            except Exception:  # a bug here must not end the loop
                log.exception("feature importance: the run failed")

    async def run_once(self) -> None:
        """One interval's computation: every served model, in name order, within the interval's call budget."""
        budget = self.settings.importance_max_model_calls
        for model in sorted(self.models()):
            if SHADOW_SEPARATOR in model or served_model(model) != model:
                continue
            if budget <= 0:
                spent = self.settings.importance_max_model_calls
                self._record(model, "budget", None, f"the interval's budget of {spent} predict calls "
                             "(importance_max_model_calls) was spent on other models; next interval")
                continue
            calls, answer, outcome, error = await self._compute(model, budget)
            budget -= calls
            if calls:
                self.model_calls.labels(self.labels(model)).inc(calls)
            self._record(model, outcome, answer, error)

    async def _compute(self, model: str, budget: int) -> tuple[int, dict[str, Any] | None, str, str | None]:
        """(model calls made, the answer, outcome, error message) of one model's computation."""
        explain = self.explainer.settings
        job = ImportanceJob(model, predict_path(model, ""), self.explainer.upstream, str(self.explainer.state_dir),
                            self.settings.importance_rows, explain.explain_background, explain.explain_samples,
                            budget, explain.explain_batch_rows, explain.explain_timeout, explain.explain_model_share)
        try:
            answer = await self.explainer.run(importance, job)
        except ImportanceError as exc:
            message = str(exc)
            if exc.status == 422:
                message = (f"the interval's budget of predict calls ran out ({budget} left of "
                           f"importance_max_model_calls); explain fewer rows (importance_rows) or raise the budget")
            return exc.model_calls, None, str(exc.status), message
        except ExplainError as exc:
            return 0, None, str(exc.status), str(exc)
        return int(answer.get("model_calls", 0)), answer, "ok", None

    def _record(self, model: str, outcome: str, answer: dict[str, Any] | None, error: str | None) -> None:
        self.runs.labels(self.labels(model), outcome).inc()
        entry = dict(self._found.get(model, {}))
        entry.update({"outcome": outcome, "error": error, "attempted": time.time()})
        if answer is not None:
            entry.update({"computed": entry["attempted"], "features": answer["features"],
                          "reference": answer["reference"], "recent": answer["recent"], "rows": answer["rows"],
                          "recent_saved": answer["recent_saved"], "model_calls": answer["model_calls"]})
        self._found[model] = entry
        if self._outcomes.get(model) != outcome:
            self._outcomes[model] = outcome
            if outcome == "ok":
                log.info("feature importance: model %s explained (%d predict calls)", model, answer and
                         answer["model_calls"])
            else:
                log.warning("feature importance: model %s: %s", model, error)

    def snapshot(self, model: str) -> dict[str, Any] | None:
        """The model's latest importance for the drill-down: both vectors by feature, the most important first."""
        entry = self._found.get(model)
        if entry is None:
            return None
        snapshot: dict[str, Any] = {
            "method": "kernel_shap, mean |attribution| to the output each row was predicted", "outcome":
            entry["outcome"], "error": entry["error"], "attempted": entry["attempted"],
            "computed": entry.get("computed"), "interval_seconds": self.settings.importance_interval,
            "budget_model_calls": self.settings.importance_max_model_calls}
        if "features" in entry:
            snapshot.update({"rows": entry["rows"], "recent_saved": entry["recent_saved"],
                             "model_calls": entry["model_calls"], "features": ranked(entry)})
        return snapshot

    def exported(self) -> Iterator[tuple[str, str, str, float]]:
        """(model label, feature, sample, value) of the `max_feature_labels` most important features per model."""
        for model, entry in sorted(self._found.items()):
            if "features" not in entry:
                continue
            for item in ranked(entry)[:self.settings.max_feature_labels]:
                for sample in SAMPLES:
                    if item[sample] is not None:
                        yield self.labels(model), item["feature"], sample, float(item[sample])


def ranked(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Per feature its importance on both samples and their difference, the most important (either sample) first."""
    items = []
    for name, reference, recent in zip(entry["features"], entry["reference"], entry["recent"], strict=True):
        change = recent - reference if recent is not None and reference is not None else None
        items.append({"feature": name, "reference": reference, "recent": recent, "change": change})
    return sorted(items, key=lambda item: -max(item["reference"] or 0.0, item["recent"] or 0.0))


class _ImportanceCollector(Collector):
    def __init__(self, importance: FeatureImportance) -> None:
        self.importance = importance

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("sidecar_feature_importance", "Mean absolute attribution of a feature to the "
                                  "model's predictions over a sample of recent traffic or of the reference (the "
                                  "max_feature_labels most important per model).", labels=["model", "feature",
                                                                                          "sample"])
        for model, feature, sample, value in self.importance.exported():
            gauge.add_metric([model, feature, sample], value)
        yield gauge
