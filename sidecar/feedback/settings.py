"""Settings of the feedback endpoint, the prediction store and the quality metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.feedback.store import DEFAULT_FLUSH_INTERVAL, DEFAULT_FLUSH_ROWS, DEFAULT_STOP_TIMEOUT
from sidecar.options import option, parse_duration, parse_float, parse_int, parse_optional_str, parse_size, parse_str


def parse_store(value: Any) -> str:
    """`sqlite` (embedded, in the state directory) or a Redis URL `redis://[:password@]host[:port][/db]`."""
    text = parse_str(value).strip()
    if text.lower() == "sqlite":
        return "sqlite"
    problem = _redis_url_problem(text)
    if problem:
        raise ValueError(f"expected sqlite or redis://host:port/db, got {value!r} ({problem})")
    return text


def _redis_url_problem(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss"):
        return "scheme must be redis or rediss"
    if not parts.hostname:
        return "no host"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "bad port"
    if not re.fullmatch(r"/?([0-9]{1,5})?", parts.path):
        return "the path must be a database number"
    return ""


@dataclass(frozen=True)
class FeedbackSettings:
    feedback_token: str | None = option(None, "bearer token required on POST /v1/feedback (off: no token)",
                                        parse_optional_str, secret=True)
    store: str = option("sqlite", "prediction store: sqlite (in the state directory) or redis://host:port/db",
                        parse_store)
    store_retention: float = option(7 * 86400.0, "how long stored predictions can receive feedback",
                                    parse_duration(1.0))
    store_max_rows: int = option(1_000_000, "stored prediction instances kept (oldest removed first; sqlite)",
                                 parse_int(100))
    store_queue_max: int = option(200_000, "prediction instances waiting for the store writer (beyond: dropped, "
                                  "counted)", parse_int(100))
    store_flush_interval: float = option(DEFAULT_FLUSH_INTERVAL, "longest a queued prediction instance waits "
                                         "for the store writer (0: written at once; see docs/durability.md)",
                                         parse_duration(0.0))
    store_flush_rows: int = option(DEFAULT_FLUSH_ROWS, "queued prediction instances that start a store write at "
                                   "once, before store_flush_interval", parse_int(1))
    store_stop_timeout: float = option(DEFAULT_STOP_TIMEOUT, "how long stopping waits for the store writer to "
                                       "write what is queued", parse_duration(0.1))
    store_key_prefix: str = option("sidecar:", "key prefix in a Redis store (to share one Redis between "
                                   "deployments)", parse_str)
    quality_window: int = option(1000, "joined instances the quality gauges are computed over", parse_int(1))
    binary_threshold: float = option(0.5, "probability threshold of binary classifiers", parse_float(0.0, 1.0))
    pending_timeout: float = option(60.0, "how long feedback waits for its prediction to be analysed",
                                    parse_duration(0.0))
    pending_max: int = option(100_000, "feedback instances held while waiting for their prediction (beyond: the "
                              "oldest expire)", parse_int(0))
    feedback_max_instances: int = option(100_000, "truth instances accepted in one POST /v1/feedback",
                                         parse_int(1))
    feedback_max_body_bytes: int = option(64 * 1024**2, "largest POST /v1/feedback body, as sent and once "
                                          "inflated (larger: 413)", parse_size(1024))
    feedback_max_depth: int = option(8, "deepest nesting of arrays and objects in a feedback body (deeper: 400; "
                                     "valid feedback needs 4)", parse_int(4, 200))
    feedback_max_number_length: int = option(100, "longest number in a feedback body, in characters (longer: 400)",
                                             parse_int(24, 1000))
    max_class_labels: int = option(50, "classes with their own label in confusion metrics", parse_int(2, 1000))
