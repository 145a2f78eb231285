"""`sidecar run` with one part of the analysis switched off, to see what each part costs the proxy's latency.

    SIDECAR_BENCH_PART=PART python bench/analysis_parts.py run [sidecar run options]

PART is `no-detectors` (workers read every batch from the ring and answer at once without decoding or
detecting: what shipping records costs) or `no-store` (predictions are not handed to the feedback store).
bench_analysis_load.py --parts runs these next to analysis off and on. The switches replace sidecar internals, so
this is a diagnostic, not a configuration. They are applied at import: the spawned workers import this file again
as their main module, which is how the worker-side switch reaches them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PART = os.environ.get("SIDECAR_BENCH_PART", "")
PARTS = ("no-detectors", "no-store")


def _switch_off(part: str) -> None:
    if part == "no-detectors":
        from sidecar.messages.records import CaptureRecord
        from sidecar.messages.results import LAG_BUCKETS, BatchDone, Result, bucket_counts
        from sidecar.worker import process as worker

        def skip(index: int, generation: int, state: object, batch_id: int,
                 records: list[CaptureRecord]) -> tuple[list[Result], BatchDone]:
            nothing = bucket_counts([], LAG_BUCKETS)
            return [], BatchDone(index, generation, batch_id, len(records), nothing, {}, {})

        worker._process = skip  # type: ignore[assignment]
    elif part == "no-store":
        from sidecar.feedback.api import FeedbackService
        from sidecar.feedback.redis_store import RedisStore
        from sidecar.feedback.sqlite_store import SqliteStore

        def ignore(self: FeedbackService, stored: object) -> None:
            return None

        def no_writer(self: object) -> None:  # the workers write nothing either
            return None

        FeedbackService.add_stored = ignore  # type: ignore[method-assign,assignment]
        SqliteStore.row_writer = no_writer  # type: ignore[method-assign,assignment]
        RedisStore.row_writer = no_writer  # type: ignore[method-assign,assignment]
    elif part:
        raise SystemExit(f"SIDECAR_BENCH_PART must be one of {', '.join(PARTS)}, not {part!r}")


_switch_off(PART)

if __name__ == "__main__":
    from sidecar.__main__ import main

    sys.exit(main())
