"""Prediction ids: honour a client's id when it is sane, else mint a unique, time-ordered one.

Minted ids are UUIDv7-shaped (RFC 9562): 48-bit Unix milliseconds, then a per-process random part and a
per-process counter, so ids sort by time and never repeat within a process or (with overwhelming probability)
across processes. Minting costs about a microsecond: no syscalls beyond reading the clock.
"""

from __future__ import annotations

import itertools
import os
import time

MAX_CLIENT_ID_LENGTH = 128
_PROCESS_BITS = int.from_bytes(os.urandom(4), "big") >> 2  # 30 bits
_counter = itertools.count(int.from_bytes(os.urandom(2), "big"))


def new_prediction_id() -> str:
    seq = next(_counter)
    ms = time.time_ns() // 1_000_000
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((seq >> 32) & 0xFFF) << 64
        | 0b10 << 62
        | _PROCESS_BITS << 32
        | (seq & 0xFFFF_FFFF)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def valid_client_id(value: str | None) -> bool:
    """A client id is used as is when it is 1..128 printable ASCII characters without surrounding spaces."""
    if not value or len(value) > MAX_CLIENT_ID_LENGTH or value != value.strip():
        return False
    return value.isascii() and value.isprintable()


def choose_prediction_id(prediction_id: str | None, request_id: str | None) -> str:
    """X-Prediction-Id wins over X-Request-Id; an absent or invalid value falls through to a fresh id."""
    if valid_client_id(prediction_id):
        return prediction_id  # type: ignore[return-value]
    if valid_client_id(request_id):
        return request_id  # type: ignore[return-value]
    return new_prediction_id()
