"""Settings of the feedback endpoint, the prediction store and the quality metrics."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.options import option, parse_duration, parse_float, parse_int, parse_optional_str, parse_str


@dataclass(frozen=True)
class FeedbackSettings:
    feedback_token: str | None = option(None, "bearer token required on POST /v1/feedback (off: no token)",
                                        parse_optional_str, secret=True)
    store: str = option("sqlite", "prediction store: sqlite (in the state directory) or redis://host:port/db",
                        parse_str)
    store_retention: float = option(7 * 86400.0, "how long stored predictions can receive feedback",
                                    parse_duration(1.0))
    store_max_rows: int = option(1_000_000, "stored prediction instances kept (oldest removed first)",
                                 parse_int(100))
    quality_window: int = option(1000, "joined instances the quality gauges are computed over", parse_int(1))
    binary_threshold: float = option(0.5, "probability threshold of binary classifiers", parse_float(0.0, 1.0))
    pending_timeout: float = option(60.0, "how long feedback waits for its prediction to be analysed",
                                    parse_duration(0.0))
    max_class_labels: int = option(50, "classes with their own label in confusion metrics", parse_int(2, 1000))
