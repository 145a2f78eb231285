"""Validate a feedback body into items, with messages that name the problem (sent back in a 400).

Accepted bodies (JSON):
- `{"prediction_id": "...", "truth": [t0, t1, ...]}`: one truth per instance of the original request, in order;
- `{"prediction_id": "...", "instance": i, "truth": t}`: one instance;
- a JSON array of such objects.
A truth is a class index (or bool), a class label string, a one-hot/probability vector, or a finite number.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from sidecar.feedback.tasks import Truth
from sidecar.proxy.ids import valid_client_id

MAX_LABEL_LENGTH = 128
_KEYS = frozenset({"prediction_id", "instance", "truth"})


class FeedbackItem(NamedTuple):
    """Truths for one prediction id: `instance` None means `truths` covers every instance, in order."""

    prediction_id: str
    instance: int | None
    truths: tuple[Truth, ...]

    @property
    def size(self) -> int:
        return len(self.truths)

    def keys(self) -> list[tuple[str, int]]:
        start = self.instance or 0
        return [(self.prediction_id, start + offset) for offset in range(len(self.truths))]


class FeedbackError(ValueError):
    """The body is not valid feedback; `item` is the position of the bad item in a batch (None for the body)."""

    def __init__(self, message: str, item: int | None = None) -> None:
        super().__init__(message)
        self.item = item


def parse_body(body: bytes, max_instances: int) -> list[FeedbackItem]:
    """Parse and validate a whole body; raises `FeedbackError` at the first problem."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise FeedbackError("malformed JSON: the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FeedbackError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if isinstance(document, dict):
        items = [parse_item(document, None)]
    elif isinstance(document, list):
        if not document:
            raise FeedbackError("the body is an empty array; send at least one feedback object")
        items = [parse_item(entry, index) for index, entry in enumerate(document)]
    else:
        raise FeedbackError(f"the body must be a JSON object or an array of objects, got {_kind(document)}")
    total = sum(item.size for item in items)
    if total > max_instances:
        raise FeedbackError(f"{total} truth instances in one request; at most {max_instances} are accepted")
    return items


def parse_item(entry: Any, index: int | None) -> FeedbackItem:
    where = "" if index is None else f"item {index}: "
    if not isinstance(entry, dict):
        raise FeedbackError(f"{where}expected an object with prediction_id and truth, got {_kind(entry)}", index)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise FeedbackError(f"{where}unknown field {unknown[0]!r} (expected prediction_id, truth and optionally "
                            "instance)", index)
    prediction_id = entry.get("prediction_id")
    if not isinstance(prediction_id, str) or not valid_client_id(prediction_id):
        raise FeedbackError(f"{where}prediction_id must be a string of 1 to 128 printable ASCII characters, got "
                            f"{_short(prediction_id)}", index)
    if "truth" not in entry:
        raise FeedbackError(f"{where}missing 'truth'", index)
    raw_truth = entry["truth"]
    if "instance" in entry:
        instance = entry["instance"]
        if not isinstance(instance, int) or isinstance(instance, bool) or instance < 0:
            raise FeedbackError(f"{where}instance must be a non-negative integer, got {_short(instance)}", index)
        return FeedbackItem(prediction_id, instance, (parse_truth(raw_truth, f"{where}truth", index),))
    if not isinstance(raw_truth, list):
        raise FeedbackError(f"{where}truth must be a list with one truth per instance (or give 'instance' for one "
                            f"instance), got {_kind(raw_truth)}", index)
    if not raw_truth:
        raise FeedbackError(f"{where}truth is an empty list", index)
    truths = tuple(parse_truth(value, f"{where}truth[{position}]", index) for position, value in enumerate(raw_truth))
    return FeedbackItem(prediction_id, None, truths)


def parse_truth(value: Any, where: str, index: int | None) -> Truth:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FeedbackError(f"{where} must be a finite number, got {value}", index)
        return value
    if isinstance(value, str):
        if not value or len(value) > MAX_LABEL_LENGTH:
            raise FeedbackError(f"{where}: a class label must have 1 to {MAX_LABEL_LENGTH} characters", index)
        return value
    if isinstance(value, list):
        if not value:
            raise FeedbackError(f"{where} is an empty vector", index)
        numbers: list[float] = []
        for entry in value:
            if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not math.isfinite(entry):
                raise FeedbackError(f"{where} must be a one-hot or probability vector of finite numbers, found "
                                    f"{_kind(entry)}", index)
            numbers.append(float(entry))
        return tuple(numbers)
    raise FeedbackError(f"{where} must be a class index, a class label, a one-hot/probability vector or a number, "
                        f"got {_kind(value)}", index)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
