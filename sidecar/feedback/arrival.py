"""Whether feedback for an id we have not seen can still meet its prediction, or deserves a 404 now.

The rule (documented in the README's feedback section):
- Ids the sidecar minted are UUIDv7: they carry the time the request was made. Such an id older than
  `store_retention` is *expired*; older than `pending_timeout` (but not in the store) it is *unknown*: its
  prediction should have been analysed by then, so it never will be (not captured, failed to decode, dropped
  from a full ring, or already removed from the store). A younger one is held as pending.
- Any other id (chosen by the client with `X-Prediction-Id`/`X-Request-Id`) carries no time: it is held as
  pending, and counted `expired` if its prediction has not arrived within `pending_timeout`.
- With `pending_timeout` or `pending_max` 0 nothing is held: an id not in the store is unknown at once.
"""

from __future__ import annotations

from typing import NamedTuple

EXPIRED = "expired"
UNKNOWN = "unknown"


def minted_at(prediction_id: str) -> float | None:
    """The Unix time in a UUIDv7 (RFC 9562) id, or None when the id is not one."""
    if len(prediction_id) != 36 or prediction_id[14] != "7" or prediction_id[19] not in "89abAB":
        return None
    if prediction_id[8] != "-" or prediction_id[13] != "-" or prediction_id[18] != "-" or prediction_id[23] != "-":
        return None
    try:
        milliseconds = int(prediction_id[:8] + prediction_id[9:13], 16)
        int(prediction_id[14:18] + prediction_id[19:23] + prediction_id[24:], 16)
    except ValueError:
        return None
    return milliseconds / 1000.0


class Verdict(NamedTuple):
    """Why an id not in the store gets a 404: outcome `expired` or `unknown`, and the message for the client."""

    outcome: str
    message: str


def judge_unknown(prediction_id: str, now: float, pending_timeout: float, retention: float,
                  can_hold: bool) -> Verdict | None:
    """None when feedback for this unseen id may wait for its prediction; else the 404 verdict."""
    minted = minted_at(prediction_id)
    if minted is not None:
        age = now - minted
        if age > retention:
            return Verdict(EXPIRED, f"prediction id {prediction_id!r} has expired: it was issued {age:.0f} s ago "
                                    f"and predictions are kept {retention:.0f} s (store_retention)")
        if age > pending_timeout:
            return Verdict(UNKNOWN, f"unknown prediction id {prediction_id!r}: issued {age:.0f} s ago but not in "
                                    "the prediction store (never analysed, or removed to respect store_max_rows)")
    if not can_hold:
        return Verdict(UNKNOWN, f"unknown prediction id {prediction_id!r}: not in the prediction store")
    return None
