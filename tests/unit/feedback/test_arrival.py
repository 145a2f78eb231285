"""When feedback for an unseen id waits for its prediction, and when it gets a 404 (expired or unknown)."""

from __future__ import annotations

import time

from sidecar.feedback.arrival import EXPIRED, UNKNOWN, judge_unknown, minted_at
from sidecar.proxy.ids import new_prediction_id


def uuid7_at(seconds: float) -> str:
    """A UUIDv7-shaped id minted at `seconds` (Unix time)."""
    text = f"{int(seconds * 1000):012x}" + "7abc" + "8def" + "0123456789ab"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def test_the_time_of_a_sidecar_minted_id_is_read_back() -> None:
    before = time.time()
    minted = minted_at(new_prediction_id())
    assert minted is not None
    assert before - 0.002 <= minted <= time.time() + 0.002


def test_ids_that_are_not_uuidv7_carry_no_time() -> None:
    assert minted_at("order-1234") is None
    assert minted_at("123e4567-e89b-42d3-a456-426614174000") is None  # version 4
    assert minted_at("zzzzzzzz-zzzz-7zzz-8zzz-zzzzzzzzzzzz") is None


def test_a_young_uuidv7_id_may_wait() -> None:
    now = time.time()
    assert judge_unknown(uuid7_at(now - 5), now, pending_timeout=60, retention=3600, can_hold=True) is None


def test_a_uuidv7_id_older_than_the_pending_timeout_is_unknown() -> None:
    now = time.time()
    verdict = judge_unknown(uuid7_at(now - 120), now, pending_timeout=60, retention=3600, can_hold=True)
    assert verdict is not None and verdict.outcome == UNKNOWN
    assert "issued 120 s ago" in verdict.message


def test_a_uuidv7_id_older_than_the_retention_has_expired() -> None:
    now = time.time()
    verdict = judge_unknown(uuid7_at(now - 7200), now, pending_timeout=60, retention=3600, can_hold=True)
    assert verdict is not None and verdict.outcome == EXPIRED
    assert "expired" in verdict.message and "store_retention" in verdict.message


def test_a_client_chosen_id_waits_unless_nothing_can_be_held() -> None:
    now = time.time()
    assert judge_unknown("order-1", now, pending_timeout=60, retention=3600, can_hold=True) is None
    verdict = judge_unknown("order-1", now, pending_timeout=60, retention=3600, can_hold=False)
    assert verdict is not None and verdict.outcome == UNKNOWN and "'order-1'" in verdict.message
