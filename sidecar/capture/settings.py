"""Settings of the capture rings between the proxies and the analysis."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.options import option, parse_bool, parse_duration, parse_int, parse_size


@dataclass(frozen=True)
class CaptureSettings:
    capture_enabled: bool = option(True, "capture predict/classify/regress exchanges for analysis", parse_bool)
    capture_max_records: int = option(10_000, "records waiting for the analysis (batches in flight included); a "
                                      "record beyond is dropped and counted", parse_int(1))
    capture_max_bytes: int = option(8 * 1024**2, "shared memory holding the records that wait for the analysis, "
                                    "split across the workers and allocated at start (part of the main process's "
                                    "resident memory); a record that does not fit is dropped and counted; raise it "
                                    "for large payloads such as images", parse_size())
    capture_batch_size: int = option(256, "records handed to the analysis per batch", parse_int(1, 100_000))
    capture_flush_interval: float = option(0.05, "longest a captured record waits for a batch to fill",
                                           parse_duration(0.001))
