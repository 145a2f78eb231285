"""Held feedback leaves by being taken, by expiring, or by eviction of the oldest when the bound is reached."""

from __future__ import annotations

from sidecar.feedback.parse import FeedbackItem
from sidecar.feedback.pending import PendingFeedback


def item(prediction_id: str, instances: int = 1) -> FeedbackItem:
    return FeedbackItem(prediction_id, None, (1,) * instances)


def test_held_items_are_taken_by_prediction_id() -> None:
    pending = PendingFeedback(max_instances=10, timeout=60)
    pending.add(item("a", 2), now=0)
    pending.add(item("b"), now=0)
    pending.add(item("a"), now=1)
    assert pending.instances == 4
    assert [held.size for held in pending.take(["a", "zzz"])] == [2, 1]
    assert pending.ids() == ["b"]
    assert pending.instances == 1
    assert pending.take(["a"]) == []


def test_items_expire_after_the_timeout_in_arrival_order() -> None:
    pending = PendingFeedback(max_instances=10, timeout=5)
    pending.add(item("a"), now=0)
    pending.add(item("b"), now=2)
    assert pending.expire(now=4.9) == []
    assert [held.prediction_id for held in pending.expire(now=5)] == ["a"]
    assert [held.prediction_id for held in pending.expire(now=100)] == ["b"]
    assert len(pending) == 0 and pending.instances == 0


def test_taken_items_do_not_expire_later() -> None:
    pending = PendingFeedback(max_instances=10, timeout=5)
    pending.add(item("a"), now=0)
    pending.take(["a"])
    assert pending.expire(now=10) == []


def test_the_oldest_items_are_evicted_when_the_bound_is_reached() -> None:
    pending = PendingFeedback(max_instances=3, timeout=60)
    assert pending.add(item("a", 2), now=0) == []
    evicted = pending.add(item("b", 2), now=1)
    assert [held.prediction_id for held in evicted] == ["a"]
    assert pending.ids() == ["b"] and pending.instances == 2


def test_many_taken_entries_do_not_accumulate() -> None:
    pending = PendingFeedback(max_instances=100_000, timeout=60)
    for index in range(5000):
        pending.add(item(f"id{index}"), now=0)
        pending.take([f"id{index}"])
    assert len(pending._order) < 2000
    assert pending.instances == 0
