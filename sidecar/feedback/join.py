"""Match a feedback item with its stored prediction: one `Join` per instance, or a message saying what is wrong."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import NamedTuple

from sidecar.feedback.parse import FeedbackError, FeedbackItem
from sidecar.feedback.store import Key, StoredPrediction
from sidecar.feedback.tasks import AUTO, UNUSABLE, TaskMismatch, Truth, resolve_auto, target


class Join(NamedTuple):
    """One instance ready to count: its key (for dedupe), model, resolved task and (truth, predicted)."""

    key: Key
    model: str
    task: str
    truth: str | float
    predicted: str | float
    raw_truth: Truth


def match(item: FeedbackItem, stored: StoredPrediction, position: int | None, threshold: float,
          auto_tasks: MutableMapping[str, str]) -> list[Join]:
    """Joins for every instance of `item`; raises `FeedbackError` (naming the item) when any does not fit.

    `auto_tasks` remembers, per model, what an `auto` task turned out to be (decided by the first truth).
    """
    where = "" if position is None else f"item {position}: "
    instances = stored.instances
    if item.instance is None:
        if len(item.truths) != len(instances):
            raise FeedbackError(f"{where}prediction {item.prediction_id!r} has {len(instances)} instance(s) but "
                                f"{len(item.truths)} truth(s) were sent", position)
        if set(instances) != set(range(len(instances))):
            raise FeedbackError(f"{where}prediction {item.prediction_id!r} is stored with instances "
                                f"{sorted(instances)[:10]}; send each truth with its 'instance'", position)
    elif item.instance not in instances:
        raise FeedbackError(f"{where}prediction {item.prediction_id!r} has no instance {item.instance} (it has "
                            f"{len(instances)})", position)
    joins: list[Join] = []
    for key, truth in zip(item.keys(), item.truths, strict=True):
        predicted = instances[key[1]]
        task = stored.task
        if task == UNUSABLE:
            raise FeedbackError(f"{where}the model's output for instance {key[1]} of {item.prediction_id!r} has no "
                                "class or single value to compare a truth with", position)
        if task == AUTO:
            task = auto_tasks.get(stored.model) or resolve_auto(predicted, truth)
        try:
            pair = target(task, predicted, truth, threshold)
        except TaskMismatch as exc:
            raise FeedbackError(f"{where}wrong truth type for instance {key[1]} of {item.prediction_id!r}: {exc}",
                                position) from None
        if stored.task == AUTO:
            auto_tasks.setdefault(stored.model, task)
        joins.append(Join(key, stored.model, task, pair[0], pair[1], truth))
    return joins
