"""`GET /v1/monitor/{model}/history`: a model's buckets, oldest first, a page at a time.

Parameters: `from` and `to` (epoch seconds; buckets that overlap [from, to], i.e. end >= from and start <= to;
default: all), `features` (a comma-separated list of input names: only those in `inputs`; at most
`MAX_FEATURE_NAMES`; without it, the first `DEFAULT_FEATURES` inputs of each bucket), `limit` (buckets per page,
default `DEFAULT_LIMIT`, at most `MAX_LIMIT`) and `cursor` (the previous page's `next`). Answers 404 for a model
neither the analysis nor the store knows, 400 naming the bad parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sidecar.history.store import HistoryStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_FEATURES = 100
MAX_FEATURE_NAMES = 256
MAX_FEATURE_NAME = 512
_LATEST = 1e18
_INTERNAL = ("bucket",)  # kept in the store, not part of a bucket's answer


class BadParameter(ValueError):
    pass


class HistoryApi:
    def __init__(self, store: HistoryStore, bucket: dict[str, Any], known: Callable[[], Iterable[str]]) -> None:
        self.store = store
        self.bucket = dict(bucket)
        self.known = known

    async def answer(self, model: str, query: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body)."""
        try:
            since = _time(query, "from", 0.0)
            until = _time(query, "to", _LATEST)
            if since > until:
                raise BadParameter(f"from ({since:g}) is after to ({until:g})")
            limit = _limit(query.get("limit"))
            features = _features(query.get("features"))
            after = _cursor(query.get("cursor"))
        except BadParameter as exc:
            return 400, {"error": str(exc)}
        if model not in set(self.known()) and not await self.store.has_model(model):
            return 404, {"error": f"no history for model {model!r}"}
        page = await self.store.page(model, since, until, after, limit)
        buckets = [_render(bucket, features) for bucket in page.buckets]
        cursor = None
        if page.more and page.buckets:
            cursor = encode_cursor(page.buckets[-1]["start"], page.buckets[-1]["end"])
        return 200, {"model": model, "bucket": self.bucket, "buckets": buckets, "next": cursor}


def _render(bucket: dict[str, Any], features: list[str] | None) -> dict[str, Any]:
    answer = {key: value for key, value in bucket.items() if key not in _INTERNAL}
    inputs = answer.get("inputs") or {}
    if features is None:
        answer["inputs"] = dict(list(inputs.items())[:DEFAULT_FEATURES])
    else:
        answer["inputs"] = {name: inputs[name] for name in features if name in inputs}
    return answer


def _time(query: Mapping[str, str], name: str, default: float) -> float:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(f"{name} must be a time in epoch seconds, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise BadParameter(f"{name} must be a finite number, got {text[:40]!r}")
    return value


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(f"limit must be an integer, got {text[:40]!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise BadParameter(f"limit must be between 1 and {MAX_LIMIT}, got {value}")
    return value


def _features(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise BadParameter("features must be a comma-separated list of input names, with no empty name")
    if len(names) > MAX_FEATURE_NAMES:
        raise BadParameter(f"features names at most {MAX_FEATURE_NAMES} inputs, got {len(names)}")
    if any(len(name) > MAX_FEATURE_NAME for name in names):
        raise BadParameter(f"a feature name is longer than {MAX_FEATURE_NAME} characters")
    return list(dict.fromkeys(names))


def encode_cursor(start: float, end: float) -> str:
    return base64.urlsafe_b64encode(json.dumps([start, end]).encode()).decode().rstrip("=")


def _cursor(text: str | None) -> tuple[float, float] | None:
    if text is None or text == "":
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        start, end = (float(item) for item in value)
    except (ValueError, TypeError, binascii.Error):
        raise BadParameter("cursor is not one this API gave out") from None
    if not (math.isfinite(start) and math.isfinite(end)):
        raise BadParameter("cursor is not one this API gave out")
    return start, end
