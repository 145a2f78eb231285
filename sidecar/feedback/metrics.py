"""Feedback and quality metrics, kept in plain dicts and turned into metric families at scrape time.

Joining costs a few dict updates; the windowed gauges (accuracy, per-class and macro precision/recall/F1/
specificity, RMSE, MAE) are computed only when Prometheus scrapes. Label values are bounded: models by the
sidecar's model label cap, classes by `max_class_labels` per model (the rest fold into `__other__`, which gets
confusion counts but no per-class gauges).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.feedback.quality import ModelQuality

OUTCOMES = ("joined", "duplicate", "pending", "expired", "unknown", "invalid", "unscored")
NO_MODEL = ""  # the model label when feedback names an id whose model is unknown


class FeedbackCounts:
    """Counters of the feedback path that are not per-model quality."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}
        self.store_dropped = 0
        self.store_errors: dict[str, int] = {}
        self.stored = {"worker": 0, "main": 0}  # rows written to the store, by who wrote them

    def outcome(self, model: str, outcome: str, instances: int = 1) -> None:
        if instances <= 0:
            return
        key = (model, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + instances

    def store_error(self, operation: str) -> None:
        self.store_errors[operation] = self.store_errors.get(operation, 0) + 1


class FeedbackCollector(Collector):
    def __init__(self, counts: FeedbackCounts, models: Mapping[str, ModelQuality],
                 gauges: Callable[[], Mapping[str, float]]) -> None:
        self.counts = counts
        self.models = models
        self.gauges = gauges

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self._feedback()
        yield from self._totals()
        yield from self._windows()

    def _feedback(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        outcomes = CounterMetricFamily(
            "sidecar_feedback", "Feedback instances by outcome: joined, duplicate (an (id, instance) already "
            "joined), pending (held until its prediction is analysed; later also joined or expired), expired, "
            "unknown (404), invalid (400) and, for a shadow (model~shadow), unscored (the primary's instance joined, "
            "the shadow's prediction of it never came within pending_timeout).", labels=["model", "outcome"])
        for (model, outcome), value in list(self.counts.outcomes.items()):
            outcomes.add_metric([model, outcome], value)
        yield outcomes
        dropped = CounterMetricFamily("sidecar_feedback_store_dropped_rows", "Prediction instances not stored "
                                      "because the store writer was too far behind (store_queue_max), or because "
                                      "they arrived while the service stopped.")
        dropped.add_metric([], self.counts.store_dropped)
        yield dropped
        stored = CounterMetricFamily("sidecar_feedback_stored_rows", "Prediction instances written to the store, by "
                                     "writer: an analysis worker (before sending them), or the main process's writer "
                                     "thread (a worker's write failed, or they came another way).", labels=["writer"])
        for writer, rows in self.counts.stored.items():
            stored.add_metric([writer], rows)
        yield stored
        errors = CounterMetricFamily("sidecar_feedback_store_errors", "Prediction store operations that failed.",
                                     labels=["operation"])
        for operation, failures in list(self.counts.store_errors.items()):
            errors.add_metric([operation], failures)
        yield errors
        for name, level in self.gauges().items():
            gauge = GaugeMetricFamily(name, _GAUGE_DOCS.get(name, name))
            gauge.add_metric([], level)
            yield gauge

    def _totals(self) -> Iterator[CounterMetricFamily]:
        confusion = CounterMetricFamily("sidecar_confusion", "Joined classification instances by true and "
                                        "predicted class, since start.", labels=["model", "truth", "predicted"])
        joined = CounterMetricFamily("sidecar_quality_joined", "Instances joined with ground truth.",
                                     labels=["model"])
        correct = CounterMetricFamily("sidecar_quality_correct", "Joined classification instances predicted "
                                      "right.", labels=["model"])
        abs_sum = CounterMetricFamily("sidecar_quality_abs_error_sum", "Sum of absolute errors of joined "
                                      "regression instances.", labels=["model"])
        squared_sum = CounterMetricFamily("sidecar_quality_squared_error_sum", "Sum of squared errors of joined "
                                          "regression instances.", labels=["model"])
        for model, quality in list(self.models.items()):
            for (truth, predicted), value in list(quality.confusion.items()):
                confusion.add_metric([model, truth, predicted], value)
            joined.add_metric([model], quality.joined)
            if quality.is_regression:
                abs_sum.add_metric([model], quality.abs_error_sum)
                squared_sum.add_metric([model], quality.squared_error_sum)
            else:
                correct.add_metric([model], quality.correct)
        yield from (confusion, joined, correct, abs_sum, squared_sum)

    def _windows(self) -> Iterator[GaugeMetricFamily]:
        window = GaugeMetricFamily("sidecar_quality_window_instances", "Joined instances in the quality window.",
                                   labels=["model"])
        accuracy = GaugeMetricFamily("sidecar_quality_accuracy", "Accuracy over the quality window.",
                                     labels=["model"])
        per_class = {name: GaugeMetricFamily(f"sidecar_quality_{name}", f"{doc} over the quality window, per "
                                             "class; class=\"macro\" is the unweighted mean over the classes "
                                             "present.", labels=["model", "class"])
                     for name, doc in (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1 score"),
                                       ("specificity", "Specificity (true negative rate)"))}
        rmse = GaugeMetricFamily("sidecar_quality_rmse", "Root mean squared error over the quality window.",
                                 labels=["model"])
        mae = GaugeMetricFamily("sidecar_quality_mae", "Mean absolute error over the quality window.",
                                labels=["model"])
        for model, quality in list(self.models.items()):
            if quality.is_regression:
                report = quality.regression.report()
                window.add_metric([model], report.instances)
                rmse.add_metric([model], report.rmse)
                mae.add_metric([model], report.mae)
                continue
            classes = quality.classification.report()
            window.add_metric([model], classes.instances)
            accuracy.add_metric([model], classes.accuracy)
            rows = [(label, scores) for label, scores in classes.classes.items()
                    if quality.class_labels.has_own(label)]
            rows.append(("macro", classes.macro))
            for label, scores in rows:
                per_class["precision"].add_metric([model, label], scores.precision)
                per_class["recall"].add_metric([model, label], scores.recall)
                per_class["f1"].add_metric([model, label], scores.f1)
                per_class["specificity"].add_metric([model, label], scores.specificity)
        yield from (window, accuracy, *per_class.values(), rmse, mae)


_GAUGE_DOCS = {
    "sidecar_feedback_pending_instances": "Feedback instances waiting for their prediction to be analysed.",
    "sidecar_feedback_store_queue_rows": "Prediction instances waiting for the store writer.",
}
