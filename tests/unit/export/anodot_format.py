"""The Anodot metrics 2.0 sample rules (support.anodot.com, "Post Time Series Data Points - Anodot 2.0 Protocol"),
checked field by field."""

from __future__ import annotations

import math
import re
from typing import Any

_FORBIDDEN = re.compile(r"[.= ]|[^\x21-\x7e]")


def check_sample(sample: Any) -> None:
    assert isinstance(sample, dict)
    assert set(sample) <= {"properties", "tags", "timestamp", "value"}
    assert {"properties", "timestamp", "value"} <= set(sample)
    assert isinstance(sample["timestamp"], int) and sample["timestamp"] > 0  # whole epoch seconds
    assert isinstance(sample["value"], (int, float)) and not isinstance(sample["value"], bool)
    assert math.isfinite(sample["value"])
    properties = sample["properties"]
    assert isinstance(properties, dict) and 1 <= len(properties) <= 20
    assert isinstance(properties.get("what"), str)
    assert properties.get("target_type", "gauge") in ("gauge", "counter")
    for key, value in properties.items():
        assert isinstance(key, str) and 0 < len(key) <= 50 and not _FORBIDDEN.search(key), key
        assert isinstance(value, str) and 0 < len(value) <= 150 and not _FORBIDDEN.search(value), (key, value)
    tags = sample.get("tags", {})
    assert isinstance(tags, dict) and len(tags) <= 40
    for key, values in tags.items():
        assert isinstance(key, str) and 0 < len(key) <= 50
        assert isinstance(values, list) and all(isinstance(v, str) and 0 < len(v) <= 150 for v in values)
