"""Predictions on their way to the store stay visible until no lookup can have missed them."""

from __future__ import annotations

from sidecar.feedback.recent import RecentPredictions
from sidecar.feedback.store import StoredPrediction


def record(value: str = "1") -> StoredPrediction:
    return StoredPrediction("m", "multiclass", 0.0, {0: value})


def test_a_put_is_visible_until_it_is_written() -> None:
    recent = RecentPredictions()
    recent.added({"a": record(), "b": record()}, rows=2)
    assert recent.queued_rows == 2
    assert recent.get("a") is not None
    recent.written(2)
    assert recent.get("a") is None and recent.get("b") is None
    assert recent.queued_rows == 0 and len(recent) == 0


def test_a_lookup_running_when_the_write_finished_still_finds_the_put() -> None:
    recent = RecentPredictions()
    recent.added({"a": record()}, rows=1)
    ticket = recent.begin_lookup()  # its read of the store may come before the write commits
    recent.written(1)
    assert recent.get("a") is not None
    recent.end_lookup(ticket)
    assert recent.get("a") is None


def test_a_lookup_begun_after_the_write_does_not_keep_it() -> None:
    recent = RecentPredictions()
    recent.added({"a": record()}, rows=1)
    early = recent.begin_lookup()
    recent.written(1)
    late = recent.begin_lookup()
    recent.end_lookup(early)
    assert recent.get("a") is None
    recent.end_lookup(late)


def test_writes_are_matched_to_puts_in_order_and_a_newer_put_of_an_id_survives_an_older_write() -> None:
    recent = RecentPredictions()
    recent.added({"a": record("1")}, rows=1)
    recent.added({"b": record(), "c": record()}, rows=3)
    recent.added({"a": record("2")}, rows=1)
    recent.written(4)  # the first two puts
    assert recent.get("b") is None
    assert recent.get("a") == record("2")
    assert recent.queued_rows == 1
    recent.written(1)
    assert len(recent) == 0
