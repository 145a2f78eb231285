"""Which features drive each model now: every `importance_interval`, mean absolute KernelSHAP attribution per feature
over a sample of the model's recent traffic and over as many reference rows, computed in the explainer processes
(`kernel.importance`) like `:explain`, so the main process stays free of numpy and the model calls use the
explainers' own connections, never the proxy's.

The recent rows come from the analysis worker that owns the model: it keeps the latest `importance_rows` analysed
rows and saves them as `recent.npz` beside `reference.npz` (`sidecar.worker.recent` says why a file). Models are
explained one after another, each with what is left of the interval's budget of `importance_max_model_calls`
predict calls; a model the budget does not reach waits for the next interval and says so.

Analysis names that are not a served model's own are explained through the route that name watches: `model@version`
(versions analysed apart) through `/v1/models/model/versions/version:predict` (or `/labels/label`) against its own
reference and recent rows; a shadow's `model~shadow` through the shadow's REST address and its model name there,
against the primary's rows (the shadow is asked the primary's requests), for every served model with a shadow
configured. A shadow that cannot be asked so (gRPC only) is not explained, and says why: `outcome: "unsupported"` in
`/v1/monitor/{name}` (and under the primary's `shadows`), as one run in the runs metric and once in the log. So does
a model whose inputs are not numbers (strings, encoded images: nothing to perturb), or whose model server answers the
TF Serving REST predict route with 404 or 405 (an Open Inference Protocol server), decided by its first run's
failure: no later run is started for it.

A model whose saved rows (recent and reference) are the files its last successful run read has nothing new to
explain: the interval skips it (no model calls), keeps that result and says so under `skipped_unchanged`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.explain.kernel import ExplainError, ImportanceError, ImportanceJob, importance
from sidecar.explain.service import ExplainService, predict_path
from sidecar.explain.unchanged import identities
from sidecar.messages.names import shadow_name, split_shadow
from sidecar.telemetry.metrics import ModelLabels
from sidecar.worker.settings import AnalysisSettings

log = logging.getLogger(__name__)
SAMPLES = ("reference", "recent")
UNSUPPORTED = "unsupported"

Address = tuple[str, int]


class ShadowRoute(NamedTuple):
    """Where a model's shadow answers over REST: its name (the `shadow` label), REST address (None: gRPC only), the
    model's name there and the version (or label) asked ("": the latest)."""

    name: str
    rest: Address | None
    model: str
    version: str


class PredictRoute(NamedTuple):
    """How one analysis name's model is called: the model server, the predict route, whose saved rows are used."""

    upstream: Address
    path: str
    rows_of: str


class FeatureImportance:
    def __init__(self, settings: AnalysisSettings, explainer: ExplainService, models: Callable[[], list[str]],
                 registry: CollectorRegistry, model_label_cap: int = 100,
                 shadows: Callable[[str], ShadowRoute | None] | None = None) -> None:
        self.settings = settings
        self.explainer = explainer
        self.models = models
        self.shadows = shadows  # a model's shadow as configured
        self.labels = ModelLabels(model_label_cap)
        self._found: dict[str, dict[str, Any]] = {}  # model -> its latest importance (or why there is none)
        self._outcomes: dict[str, str] = {}  # model -> the latest outcome, to log changes only
        self._unsupported: dict[str, str] = {}  # model -> why it cannot be explained (decided once)
        self._unchanged_said: set[str] = set()  # models whose first skip for unchanged rows was logged
        self._task: asyncio.Task[None] | None = None
        self.runs = Counter("sidecar_feature_importance_runs", "Feature importance computations, by outcome (ok, "
                            "budget: left for the next interval, unsupported: counted once when decided, not "
                            "reachable through a TF Serving REST predict route or inputs that are not numbers, or "
                            "the HTTP status of the error).", ["model", "outcome"], registry=registry)
        self.skipped_unchanged = Counter("sidecar_feature_importance_skipped_unchanged", "Intervals a model was not "
                                         "explained again: its recent rows and reference were the files its last "
                                         "successful run read (that result is kept; no model calls).", ["model"],
                                         registry=registry)
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
        analysed = set(self.models())
        for model in self.names(analysed):
            route = self._unsupported.get(model) or self.route(model, analysed)
            if isinstance(route, str):
                if not self._decided(model, route):  # a decision is one run; the intervals after it cost nothing
                    self._record(model, UNSUPPORTED, None, route)
                continue
            if await self._unchanged(model):
                continue
            if budget <= 0:
                spent = self.settings.importance_max_model_calls
                self._record(model, "budget", None, f"the interval's budget of {spent} predict calls "
                             "(importance_max_model_calls) was spent on other models; next interval")
                continue
            calls, answer, outcome, error = await self._compute(model, route, budget)
            budget -= calls
            if calls:
                self.model_calls.labels(self.labels(model)).inc(calls)
            self._record(model, outcome, answer, error)

    def names(self, analysed: set[str]) -> list[str]:
        """The analysis names, and for each served model with a shadow configured, the shadow's (`model~shadow`)."""
        names = set(analysed)
        if self.shadows is not None:
            for name in analysed:
                served = self.settings.served_name(name)
                target = self.shadows(served)
                if target is not None:
                    names.add(shadow_name(served, target.name))
        return sorted(names)

    def _decided(self, model: str, reason: str) -> bool:
        """Whether `model` was already recorded unsupported for this very reason."""
        entry = self._found.get(model, {})
        return entry.get("outcome") == UNSUPPORTED and entry.get("error") == reason

    async def _unchanged(self, model: str) -> bool:
        """Whether the files `model`'s last successful run read are still as they were; if so the interval skips the
        model, keeps that result and says so (logged the first time)."""
        entry = self._found.get(model)
        if entry is None or entry["outcome"] != "ok" or not entry.get("files"):
            return False
        read: dict[str, Any] = entry["files"]
        if await asyncio.to_thread(identities, read) != read:  # a stat per file, off the event loop
            return False
        self.skipped_unchanged.labels(self.labels(model)).inc()
        now = time.time()
        skipped = entry.get("skipped_unchanged") or {"since": now, "intervals": 0}
        entry["skipped_unchanged"] = {
            "since": skipped["since"], "checked": now, "intervals": skipped["intervals"] + 1,
            "why": "its recent rows and reference are the files the result shown was computed on (recent rows saved "
                   "at recent_saved): it is explained again once they change, with no model calls until then"}
        if model not in self._unchanged_said:
            self._unchanged_said.add(model)
            log.info("feature importance: model %s: its recent rows have not changed since its last run; that result "
                     "is kept and the model is explained again once they change (no model calls until then)", model)
        return True

    def route(self, name: str, analysed: set[str]) -> PredictRoute | str:
        """How the model an analysis name watches is called, or why it cannot be."""
        primary, shadow = split_shadow(name)
        if shadow:
            target = self.shadows(primary) if self.shadows is not None else None
            if target is None or target.name != shadow:
                return (f"shadow {shadow!r} of model {primary!r} is not configured now: its feature importance is not "
                        "computed")
            if target.rest is None:
                return (f"shadow {shadow!r} of model {primary!r} has no REST address (gRPC only): the feature "
                        "importance calls models through their REST predict route, so it is not computed")
            # the primary's rows: its own name's, else a version's (versions analysed apart)
            rows_of = primary if primary in analysed else next(
                (known for known in sorted(analysed) if self.settings.served_name(known) == primary), primary)
            return PredictRoute(target.rest, predict_path(target.model, target.version), rows_of)
        served = self.settings.served_name(name)
        version = name[len(served) + 1:] if served != name else ""
        return PredictRoute(self.explainer.upstream, predict_path(served, version), name)

    async def _compute(self, model: str, route: PredictRoute,
                       budget: int) -> tuple[int, dict[str, Any] | None, str, str | None]:
        """(model calls made, the answer, outcome, error message) of one model's computation."""
        explain = self.explainer.settings
        job = ImportanceJob(model, route.path, route.upstream, str(self.explainer.state_dir),
                            self.settings.importance_rows, explain.explain_background, explain.explain_samples,
                            budget, explain.explain_batch_rows, explain.explain_timeout, explain.explain_model_share,
                            route.rows_of)
        try:
            answer = await self.explainer.run(importance, job)
        except ImportanceError as exc:
            message = str(exc)
            if exc.unsupported:  # no later run can do better: decided once, no more runs spent on it
                message = self._unsupported[model] = (f"{message}; its feature importance is not computed (until the "
                                                      "sidecar restarts)")
                return exc.model_calls, None, UNSUPPORTED, message
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
        entry.pop("skipped_unchanged", None)
        entry.update({"outcome": outcome, "error": error, "attempted": time.time()})
        if answer is not None:
            entry.update({"computed": entry["attempted"], "features": answer["features"],
                          "reference": answer["reference"], "recent": answer["recent"], "rows": answer["rows"],
                          "recent_saved": answer["recent_saved"], "model_calls": answer["model_calls"],
                          "files": answer.get("files")})
        self._found[model] = entry
        if self._outcomes.get(model) != outcome:
            self._outcomes[model] = outcome
            if outcome == "ok":
                log.info("feature importance: model %s explained (%d predict calls)", model, answer and
                         answer["model_calls"])
            else:  # a model still waiting for its reference or recent rows (409) is no fault
                log.log(logging.INFO if outcome == "409" else logging.WARNING, "feature importance: model %s: %s",
                        model, error)

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
        if "skipped_unchanged" in entry:
            snapshot["skipped_unchanged"] = dict(entry["skipped_unchanged"])
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
