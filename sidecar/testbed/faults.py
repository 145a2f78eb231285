"""Test hooks for proxy tests, outside TF Serving's behaviour: only requests that carry them are affected.

- `X-Testbed-Delay-Ms: N` (REST header) / `x-testbed-delay-ms` (gRPC metadata): answer N ms later (max 60 s).
- `X-Testbed-Echo-Headers: 1` (REST): the response carries `X-Testbed-Echo-Headers` with the request's headers
  as a JSON object (lower-case names), so a test can see what reached the model server.
- gRPC: a received `traceparent` is echoed back as trailing metadata `x-testbed-traceparent`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

DELAY_HEADER = "x-testbed-delay-ms"
ECHO_HEADER = "x-testbed-echo-headers"
TRACEPARENT_TRAILER = "x-testbed-traceparent"
MAX_DELAY_SECONDS = 60.0


def delay_seconds(value: str | None) -> float:
    """The requested delay; absent or malformed values mean none."""
    if not value:
        return 0.0
    try:
        milliseconds = float(value.strip())
    except ValueError:
        return 0.0
    if milliseconds != milliseconds or milliseconds <= 0:
        return 0.0
    return min(milliseconds / 1000.0, MAX_DELAY_SECONDS)


async def apply_delay(value: str | None) -> None:
    seconds = delay_seconds(value)
    if seconds:
        await asyncio.sleep(seconds)


def wants_echo(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def echo_value(headers: Iterable[tuple[str, str]]) -> str:
    """Request headers as one header value: a compact JSON object (repeated names joined with ", ")."""
    seen: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        seen[key] = f"{seen[key]}, {value}" if key in seen else value
    return json.dumps(seen, separators=(",", ":"), ensure_ascii=True)
