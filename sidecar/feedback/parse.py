"""Validate a feedback body into items, with messages that name the problem (sent back in a 400).

Accepted bodies (JSON, UTF-8):
- `{"prediction_id": "...", "truth": [t0, t1, ...]}`: one truth per instance of the original request, in order;
- `{"prediction_id": "...", "instance": i, "truth": t}`: one instance;
- a JSON array of such objects.
A truth is a class index (or bool), a class label string, a one-hot/probability vector, or a finite number.

Any body gets an answer, never an exception other than `FeedbackError`: before `json.loads` sees the body, a linear
scan (`check_shape`, regular expressions and byte operations that run in C) bounds how deep arrays and objects nest
(the standard library's parser recurses once per level and raises RecursionError near 1,000) and how long a number
is (it refuses integers of more than 4,300 digits with a ValueError). Duplicate keys are refused too: which of two
values would count is ambiguous.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, NamedTuple

from sidecar.feedback.tasks import Truth
from sidecar.proxy.ids import valid_client_id

MAX_LABEL_LENGTH = 128
DEFAULT_MAX_DEPTH = 8
DEFAULT_MAX_NUMBER_LENGTH = 100
_KEYS = frozenset({"prediction_id", "instance", "truth"})
_FLOAT_MAX = sys.float_info.max

_NUMBER_RUNS = bytes(ord("0") if byte in b"-+.0123456789eE" else byte if byte == ord('"') else ord(" ")
                     for byte in range(256))
_ZEROS = re.compile(b"0+")
_NOT_MARKS = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_MARKS = bytes.maketrans(b"{}", b"[]")
_QUOTED = re.compile(b'"[^"]*+"?')  # possessive: no backtracking state per byte


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


def parse_body(body: bytes, max_instances: int, max_depth: int = DEFAULT_MAX_DEPTH,
               max_number_length: int = DEFAULT_MAX_NUMBER_LENGTH) -> list[FeedbackItem]:
    """Parse and validate a whole body; raises `FeedbackError` at the first problem, and nothing else."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedbackError(f"malformed JSON: the body is not UTF-8 (byte {exc.start})") from None
    check_shape(body, max_depth, max_number_length, 3 * max_instances + 1)  # a list, then per instance at most
    #                                                                      an object, its truth list and a vector
    try:
        document = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise FeedbackError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # check_shape bounds the depth well below the recursion limit; kept as a backstop
        raise FeedbackError("malformed JSON: arrays and objects nest too deeply") from None
    except FeedbackError:
        raise
    except ValueError as exc:  # e.g. an integer past Python's digit limit, should the number limit allow one
        raise FeedbackError(f"malformed JSON: {_clip(str(exc), 100)}") from None
    if isinstance(document, dict):
        items = [parse_item(document, None, max_instances)]
    elif isinstance(document, list):
        if not document:
            raise FeedbackError("the body is an empty array; send at least one feedback object")
        if len(document) > max_instances:
            raise FeedbackError(f"{len(document)} feedback objects in one request; at most {max_instances} truth "
                                "instances are accepted")
        items = [parse_item(entry, index, max_instances) for index, entry in enumerate(document)]
    else:
        raise FeedbackError(f"the body must be a JSON object or an array of objects, got {_kind(document)}")
    total = sum(item.size for item in items)
    if total > max_instances:
        raise FeedbackError(f"{total} truth instances in one request; at most {max_instances} are accepted")
    return items


def check_shape(body: bytes, max_depth: int, max_number_length: int, max_containers: int | None = None) -> None:
    """Refuse a body whose arrays and objects nest deeper than `max_depth`, with more than `max_containers` of them,
    or with a number longer than `max_number_length` characters, in time linear in its size, with byte operations
    that run in C (a 12 MB body of feedback takes about 30 ms, a fifth of `json.loads`). Expects UTF-8 (checked
    before): no byte of a multi-byte character is a quote, a backslash, a bracket or a digit.

    Escapes go first (pairs of backslashes, then backslash-quote), so every quote left opens or closes a string,
    and whether a position lies inside a string is the parity of the quotes before it.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    _check_numbers(body, max_number_length)
    _check_depth(body, max_depth, max_containers)


def _check_numbers(body: bytes, max_length: int) -> None:
    """A run of more than `max_length` number characters outside strings is refused."""
    runs = body.translate(_NUMBER_RUNS)  # number characters -> "0", quotes kept, the rest -> " "
    needle = b"0" * (max_length + 1)
    position = runs.find(needle)
    counted = quotes = 0
    while position >= 0:
        quotes += runs.count(b'"', counted, position)
        counted = position
        if quotes % 2 == 0:
            raise FeedbackError(f"a number in the body is longer than {max_length} characters (it starts "
                                f"{body[position:position + 20].decode('ascii')}...)")
        run = _ZEROS.match(runs, position)
        assert run is not None
        position = runs.find(needle, run.end())  # that run was inside a string (an id of digits): look further


def _check_depth(body: bytes, max_depth: int, max_containers: int | None) -> None:
    """Only quotes and brackets remain, then strings go (with any brackets they hold), then each pass deletes
    every innermost `[]` pair: the passes needed are the deepest nesting of matched pairs, and brackets left
    unmatched add to it. That bounds how deep `json.loads` would recurse before it finishes or fails, which is
    all this needs (a body with unmatched brackets is malformed anyway). Cheap checks go first: a run of opening
    brackets, then the count (so a body of millions of small arrays costs no passes)."""
    marks = body.translate(_MARKS, _NOT_MARKS).replace(b'""', b"")  # deleting two adjacent quotes keeps parity
    if b'"' in marks:
        marks = _QUOTED.sub(b"", marks)  # the rare string that holds brackets
    too_deep = FeedbackError(f"arrays and objects nest more than {max_depth} levels deep (feedback needs 4)")
    if b"[" * (max_depth + 1) in marks:  # that many opening brackets in a row nest that deep
        raise too_deep
    if max_containers is not None and (containers := marks.count(b"[")) > max_containers:
        raise FeedbackError(f"the body holds {containers} arrays and objects; feedback for the truth instances "
                            f"accepted in one request needs at most {max_containers}")
    depth = 0
    while depth <= max_depth:
        inner = marks.replace(b"[]", b"")
        if len(inner) == len(marks):
            break
        marks = inner
        depth += 1
    if depth + marks.count(b"[") > max_depth:
        raise too_deep


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict; a key given twice is refused (which value would count is ambiguous)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FeedbackError(f"malformed JSON: the key {_name(key)} appears twice in one object")
            seen.add(key)
    return document


def parse_item(entry: Any, index: int | None, max_instances: int | None = None) -> FeedbackItem:
    where = "" if index is None else f"item {index}: "
    if not isinstance(entry, dict):
        raise FeedbackError(f"{where}expected an object with prediction_id and truth, got {_kind(entry)}", index)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise FeedbackError(f"{where}unknown field {_name(unknown[0])} (expected prediction_id, truth and "
                            "optionally instance)", index)
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
    if max_instances is not None and len(raw_truth) > max_instances:  # before looking at a million truths
        raise FeedbackError(f"{len(raw_truth)} truth instances in one request; at most {max_instances} are accepted",
                            index)
    truths = tuple(parse_truth(value, f"{where}truth[{position}]", index) for position, value in enumerate(raw_truth))
    return FeedbackItem(prediction_id, None, truths)


def parse_truth(value: Any, where: str, index: int | None) -> Truth:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _finite(value):  # every truth must be usable as a float (regression, vectors)
            raise FeedbackError(f"{where} must be a finite number, got {_kind(value)}", index)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FeedbackError(f"{where} must be a finite number, got {value}", index)
        return value
    if isinstance(value, str):
        if not value or len(value) > MAX_LABEL_LENGTH:
            raise FeedbackError(f"{where}: a class label must have 1 to {MAX_LABEL_LENGTH} characters", index)
        if not _encodable(value):  # a lone surrogate escape ("\\ud800") would break the metrics exposition
            raise FeedbackError(f"{where}: a class label must be valid Unicode text, got {_short(value)}", index)
        return value
    if isinstance(value, list):
        if not value:
            raise FeedbackError(f"{where} is an empty vector", index)
        numbers: list[float] = []
        for entry in value:
            if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not _finite(entry):
                raise FeedbackError(f"{where} must be a one-hot or probability vector of finite numbers, found "
                                    f"{_kind(entry)}", index)
            numbers.append(float(entry))
        return tuple(numbers)
    raise FeedbackError(f"{where} must be a class index, a class label, a one-hot/probability vector or a number, "
                        f"got {_kind(value)}", index)


def _finite(number: int | float) -> bool:
    """Finite, and within a float's range (`math.isfinite` of a huge int raises OverflowError)."""
    if isinstance(number, int):
        return -_FLOAT_MAX <= number <= _FLOAT_MAX
    return math.isfinite(number)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        return f"the number {_clip(repr(value), 60)}"
    return type(value).__name__


def _short(value: Any) -> str:
    """A short rendering of a JSON value for a message, in time independent of its size."""
    if isinstance(value, dict):
        return f"an object of {len(value)} field(s)"
    if isinstance(value, list):
        return f"an array of {len(value)} item(s)"
    if isinstance(value, str):
        return _clip(json.dumps(value[:61]), 60)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return _clip(json.dumps(value) if not isinstance(value, int) else repr(value), 60)


def _name(key: str) -> str:
    return _clip(repr(key[:61]), 60)


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."
