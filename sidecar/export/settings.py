"""Settings of the payload log sinks and the Anodot metrics export."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sidecar.options import (
    OFF_WORDS,
    option,
    parse_choice,
    parse_duration,
    parse_float,
    parse_int,
    parse_optional_str,
    parse_size,
    parse_str,
    parse_str_list,
)

_HTTP_URL = re.compile(r"https?://[^\s/?#]+(?:/[^\s?#]*)?")
_HTTP_URL_WITH_QUERY = re.compile(r"https?://[^\s/?#]+(?:/[^\s?#]*)?(?:\?[^\s#]*)?")


def parse_optional_http_url(value: Any) -> str | None:
    """An absolute http(s) base URL (path allowed, no query: paths are appended to it), or off."""
    return _parse_url(value, _HTTP_URL)


def parse_optional_endpoint_url(value: Any) -> str | None:
    """An absolute http(s) URL, query allowed, or off."""
    return _parse_url(value, _HTTP_URL_WITH_QUERY)


def _parse_url(value: Any, pattern: re.Pattern[str]) -> str | None:
    text = parse_str(value).strip()
    if text.lower() in OFF_WORDS:
        return None
    if not pattern.fullmatch(text):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return text


def parse_bucket(value: Any) -> float:
    """Anodot bucket length: 0 (off) or at least one second (Anodot timestamps are whole seconds)."""
    seconds: float = parse_duration(0.0)(value)
    if 0 < seconds < 1:
        raise ValueError(f"must be 0 (off) or at least 1s, got {value!r}")
    return seconds


def parse_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """Static `name: value` pairs: a YAML mapping, a JSON object, or `name=value,name=value`."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON object: {exc.msg}") from None
    if isinstance(value, dict):
        items = [(str(key), str(item)) for key, item in value.items()]
    elif isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, sep, item = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected name=value pairs, got {part!r}")
            items.append((key.strip(), item.strip()))
    else:
        raise ValueError("expected a mapping or name=value pairs")
    for key, item in items:
        if not key or not item:
            raise ValueError(f"empty name or value in {key!r}={item!r}")
    return tuple(items)


ANODOT_RESERVED = frozenset({"what", "target_type", "ver", "unit"})


def parse_anodot_properties(value: Any) -> tuple[tuple[str, str], ...]:
    pairs = parse_pairs(value)
    for key, _ in pairs:
        if key in ANODOT_RESERVED:
            raise ValueError(f"{key!r} is set by the exporter itself")
    return pairs


@dataclass(frozen=True)
class ExportSettings:
    payload_log_file: str | None = option(None, "JSONL payload log path (rotated), or off", parse_optional_str)
    payload_log_file_max_bytes: int = option(100 * 1024**2, "JSONL file size before rotation", parse_size(1024))
    payload_log_file_keep: int = option(5, "rotated JSONL files kept", parse_int(1, 1000))
    payload_log_url: str | None = option(None, "CloudEvents (binary mode) HTTP endpoint, or off",
                                         parse_optional_endpoint_url)
    payload_log_mode: str = option("all", "what is logged: request, response or all",
                                   parse_choice("request", "response", "all"))
    payload_log_sample_rate: float = option(1.0, "fraction of exchanges logged", parse_float(0.0, 1.0))
    payload_log_max_body: int = option(1024**2, "largest body per event (larger: truncated and marked)",
                                       parse_size(16))
    payload_log_redact: tuple[str, ...] = option((), "input field names replaced by \"[REDACTED]\" (comma list)",
                                                 parse_str_list)
    payload_log_queue: int = option(10_000, "events queued per sink before dropping", parse_int(1))
    payload_log_queue_bytes: int = option(128 * 1024**2, "body bytes queued per sink before dropping",
                                          parse_size(1024))
    payload_log_senders: int = option(2, "concurrent senders per HTTP sink", parse_int(1, 64))
    payload_log_batch: int = option(100, "events per batch (file sink writes, HTTP sink sends)", parse_int(1))
    payload_log_flush_interval: float = option(1.0, "longest an event waits for a batch", parse_duration(0.001))
    payload_log_timeout: float = option(10.0, "seconds one CloudEvents POST may take", parse_duration(0.001))
    payload_log_retries: int = option(3, "retries of a failed CloudEvents POST (while the queue has room)",
                                      parse_int(0, 100))
    payload_log_source: str = option("urn:tfs-sidecar", "CloudEvents source attribute (a URI reference)",
                                     parse_str)
    payload_log_service: str | None = option(None, "ce-inferenceservicename value (default: the model name)",
                                             parse_optional_str)
    payload_log_namespace: str | None = option(None, "ce-namespace value (e.g. the pod's namespace), or off",
                                               parse_optional_str)
    shutdown_flush_timeout: float = option(5.0, "seconds allowed to flush queues on SIGTERM", parse_duration(0.0))
    anodot_bucket: float = option(0.0, "Anodot bucket length in seconds (0: off)", parse_bucket)
    anodot_dir: str | None = option(None, "directory for Anodot bucket files (default: <state_dir>/anodot)",
                                    parse_optional_str)
    anodot_url: str | None = option(None, "Anodot API base URL (posting on when a token is set too)",
                                    parse_optional_http_url)
    anodot_token: str | None = option(None, "Anodot API token", parse_optional_str, secret=True)
    anodot_properties: tuple[tuple[str, str], ...] = option(
        (), "static Anodot properties added to every sample (name=value,... or a mapping), e.g. env=prod",
        parse_anodot_properties)
    anodot_retries: int = option(3, "retries of a failed Anodot post", parse_int(0, 100))
    anodot_timeout: float = option(30.0, "seconds one Anodot post may take", parse_duration(0.001))

    @property
    def payload_log_enabled(self) -> bool:
        return self.payload_log_file is not None or self.payload_log_url is not None

    @property
    def anodot_enabled(self) -> bool:
        return self.anodot_bucket > 0

    @property
    def anodot_posting(self) -> bool:
        return self.anodot_url is not None and self.anodot_token is not None
