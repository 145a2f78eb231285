"""Settings of the payload log sinks and the Anodot metrics export."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.options import (
    option,
    parse_choice,
    parse_duration,
    parse_float,
    parse_int,
    parse_optional_str,
    parse_size,
    parse_str_list,
)


@dataclass(frozen=True)
class ExportSettings:
    payload_log_file: str | None = option(None, "JSONL payload log path (rotated), or off", parse_optional_str)
    payload_log_file_max_bytes: int = option(100 * 1024**2, "JSONL file size before rotation", parse_size(1024))
    payload_log_file_keep: int = option(5, "rotated JSONL files kept", parse_int(1, 1000))
    payload_log_url: str | None = option(None, "CloudEvents (binary mode) HTTP endpoint, or off", parse_optional_str)
    payload_log_mode: str = option("all", "what is logged: request, response or all",
                                   parse_choice("request", "response", "all"))
    payload_log_sample_rate: float = option(1.0, "fraction of exchanges logged", parse_float(0.0, 1.0))
    payload_log_max_body: int = option(1024**2, "largest body per event (larger: truncated and marked)",
                                       parse_size(16))
    payload_log_redact: tuple[str, ...] = option((), "input field names replaced by \"[REDACTED]\" (comma list)",
                                                 parse_str_list)
    payload_log_queue: int = option(10_000, "events queued per sink before dropping", parse_int(1))
    payload_log_senders: int = option(2, "concurrent senders per HTTP sink", parse_int(1, 64))
    payload_log_batch: int = option(100, "events per batch (file sink writes, HTTP sink sends)", parse_int(1))
    payload_log_flush_interval: float = option(1.0, "longest an event waits for a batch", parse_duration(0.001))
    shutdown_flush_timeout: float = option(5.0, "seconds allowed to flush queues on SIGTERM", parse_duration(0.0))
    anodot_bucket: float = option(0.0, "Anodot bucket length in seconds (0: off)", parse_duration(0.0))
    anodot_dir: str | None = option(None, "directory for Anodot bucket files (default: <state_dir>/anodot)",
                                    parse_optional_str)
    anodot_url: str | None = option(None, "Anodot API base URL (posting on when a token is set too)",
                                    parse_optional_str)
    anodot_token: str | None = option(None, "Anodot API token", parse_optional_str, secret=True)
