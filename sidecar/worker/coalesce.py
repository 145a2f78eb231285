"""Results held in a worker between sends, merged so the main process applies few, small messages.

Why: every message the main process applies runs on its GIL, next to the event loop. Applying one batch's results
took about 1.2 ms of CPU on a 2-vCPU VM (unpickling plus metric and drill-down updates), 17 times a second in
bench/bench_analysis_load.py, and the proxy's p99 rose with it. Merged and sent at most once per
`result_interval`, the same information costs one short burst per interval.

Merging keeps what the metrics and the drill-down read (shadow comparisons: counts summed, the latest agreement and
verdict; version drift like drift windows): the latest drift window of each model and detector with the
number of windows it stands for and how many of them drifted; the latest model status; outlier and data-quality
counts summed (outlier score bucket counts too, with the largest score; the detector duration of the latest
batch); stored predictions concatenated per model; every model error and every closed history bucket. `BatchDone`
is not held: the worker sends it at once, since it frees the batch's slot in the pool.
"""

from __future__ import annotations

from typing import Any

from sidecar.messages.results import (
    DriftWindow,
    HistoryBucket,
    ModelError,
    ModelStatus,
    OutlierBatch,
    QualityBatch,
    QualityEstimate,
    Result,
    ShadowBatch,
    StoredPredictions,
    VersionDrift,
    add_counted,
)

# Items (predicted instances, drift features) per message: unpickling one message is a single C call that
# holds the main process's GIL, and a second's worth of predictions is about 3,000 at 3k requests/s; parts of this
# size keep each such call short.
PART_ITEMS = 256


class ResultBuffer:
    """Results waiting to be sent; `take()` empties it, in the order their keys first appeared."""

    def __init__(self) -> None:
        self._held: dict[tuple[Any, ...], Result] = {}
        self._errors: list[ModelError] = []

    def __len__(self) -> int:
        return len(self._held) + len(self._errors)

    def extend(self, results: list[Result]) -> None:
        for result in results:
            self.add(result)

    def add(self, result: Result) -> None:
        if isinstance(result, ModelError):
            self._errors.append(result)
            return
        key = _key(result)
        if key is None:
            raise ValueError(f"{type(result).__name__} is not held; send it directly")
        previous = self._held.get(key)
        self._held[key] = result if previous is None else _merge(previous, result)

    def take(self) -> list[Result]:
        taken: list[Result] = [*self._held.values(), *self._errors]
        self._held = {}
        self._errors = []
        return taken

    def take_parts(self, items: int = PART_ITEMS) -> list[list[Result]]:
        """`take()`, cut into messages of about `items` items each (long predictions split across them)."""
        parts: list[list[Result]] = []
        part: list[Result] = []
        weight = 0
        for result in self.take():
            pieces: list[Result] = [result]
            if isinstance(result, StoredPredictions) and len(result.ids) > items:
                pieces = [result.cut(start, end) for start, end in _cuts(result.ids, items)]
            for piece in pieces:
                size = _items(piece)
                if part and weight + size > items:
                    parts.append(part)
                    part, weight = [], 0
                part.append(piece)
                weight += size
        if part:
            parts.append(part)
        return parts


def _cuts(ids: list[str], items: int) -> list[tuple[int, int]]:
    """Slices of about `items` ids that never part one prediction's instances: the feedback service joins held
    truth as soon as a prediction's id arrives, and a prediction cut in two failed to join as invalid."""
    cuts = []
    start = 0
    while start < len(ids):
        end = min(start + items, len(ids))
        while end < len(ids) and ids[end] == ids[end - 1]:
            end += 1
        cuts.append((start, end))
        start = end
    return cuts


def _items(result: Result) -> int:
    if isinstance(result, StoredPredictions):
        return len(result.ids)
    if isinstance(result, DriftWindow):
        return max(1, len(result.features))
    if isinstance(result, HistoryBucket):
        return max(1, len(result.inputs))
    return 1


def _key(result: Result) -> tuple[Any, ...] | None:
    if isinstance(result, DriftWindow):
        return ("drift", result.model, result.detector)
    if isinstance(result, ModelStatus):
        return ("status", result.model)
    if isinstance(result, OutlierBatch):
        return ("outliers", result.model, result.detector)
    if isinstance(result, QualityBatch):
        return ("quality", result.model)
    if isinstance(result, StoredPredictions):
        return ("predictions", result.model)
    if isinstance(result, ShadowBatch):
        return ("shadow", result.model, result.shadow)
    if isinstance(result, VersionDrift):
        return ("version", result.model, result.version)
    if isinstance(result, HistoryBucket):
        return ("bucket", result.model, result.start, result.end)  # each bucket goes as it is
    if isinstance(result, QualityEstimate):
        return ("estimate", result.model)
    return None


def _merge(previous: Result, latest: Result) -> Result:
    if isinstance(previous, DriftWindow) and isinstance(latest, DriftWindow):
        evaluated, drifted = previous.counts()
        more, more_drifted = latest.counts()
        return latest._replace(evaluated=evaluated + more, drifted=drifted + more_drifted)
    if isinstance(previous, OutlierBatch) and isinstance(latest, OutlierBatch):
        return latest._replace(instances=previous.instances + latest.instances,
                               outliers=previous.outliers + latest.outliers,
                               scores=add_counted(previous.scores, latest.scores),
                               max_score=max((score for score in (previous.max_score, latest.max_score)
                                              if score is not None), default=None))
    if isinstance(previous, QualityBatch) and isinstance(latest, QualityBatch):
        counts = dict(previous.counts)
        for key, count in latest.counts.items():
            counts[key] = counts.get(key, 0) + count
        return latest._replace(instances=previous.instances + latest.instances, counts=counts)
    if isinstance(previous, StoredPredictions) and isinstance(latest, StoredPredictions):
        return previous.joined(latest)
    if isinstance(previous, ShadowBatch) and isinstance(latest, ShadowBatch):
        confusion = dict(previous.confusion)
        for key, count in latest.confusion.items():
            confusion[key] = confusion.get(key, 0) + count
        return latest._replace(pairs=previous.pairs + latest.pairs, agreed=previous.agreed + latest.agreed,
                               unmatched=previous.unmatched + latest.unmatched, confusion=confusion,
                               abs_diff=add_counted(previous.abs_diff, latest.abs_diff),
                               rel_diff=add_counted(previous.rel_diff, latest.rel_diff),
                               drift=latest.drift if latest.drift is not None else previous.drift,
                               drift_windows=previous.drift_windows + latest.drift_windows,
                               drifted=previous.drifted + latest.drifted)
    if isinstance(previous, VersionDrift) and isinstance(latest, VersionDrift):
        evaluated, drifted = previous.counts()
        more, more_drifted = latest.counts()
        return latest._replace(evaluated=evaluated + more, drifted=drifted + more_drifted)
    return latest  # ModelStatus, QualityEstimate: the latest says it all
