"""Predictions on their way to the store stay visible until no lookup can have missed them."""

from __future__ import annotations

import gc

from sidecar.feedback.recent import RecentPredictions
from sidecar.feedback.store import PredictionColumns


def put(*ids: str, value: str = "1") -> PredictionColumns:
    return PredictionColumns("m", list(ids), [0] * len(ids), ["multiclass"] * len(ids), [value] * len(ids), 0.0)


def test_a_put_is_visible_until_it_is_written() -> None:
    recent = RecentPredictions()
    recent.added(put("a", "b"))
    assert recent.queued_rows == 2
    assert recent.get("a") is not None
    recent.written(2)
    assert recent.get("a") is None and recent.get("b") is None
    assert recent.queued_rows == 0 and len(recent) == 0


def test_a_written_put_stays_while_a_lookup_that_began_before_the_write_runs() -> None:
    recent = RecentPredictions()
    recent.added(put("a"))
    ticket = recent.begin_lookup()  # its read of the store may come before the write commits
    recent.written(1)
    assert recent.get("a") is not None
    recent.end_lookup(ticket)
    assert recent.get("a") is None


def test_lookups_that_began_after_the_write_do_not_keep_it() -> None:
    recent = RecentPredictions()
    recent.added(put("a"))
    early = recent.begin_lookup()
    recent.written(1)
    late = recent.begin_lookup()
    recent.end_lookup(early)
    assert recent.get("a") is None
    recent.end_lookup(late)


def test_a_later_put_of_the_same_id_survives_the_earlier_one_being_written() -> None:
    recent = RecentPredictions()
    recent.added(put("a", value="1"))
    recent.added(PredictionColumns("m", ["b", "c", "c"], [0, 0, 1], ["multiclass"] * 3, ["1"] * 3, 0.0))
    recent.added(put("a", value="2"))
    recent.written(4)  # the first two puts
    assert recent.get("b") is None
    stored = recent.get("a")
    assert stored is not None and stored.instances == {0: "2"}
    assert recent.queued_rows == 1
    recent.written(1)
    assert len(recent) == 0


def test_a_put_adds_no_object_per_instance_for_the_garbage_collector() -> None:
    ids = [f"id-{index}" for index in range(2000)]
    big = PredictionColumns("m", ids, [0] * 2000, ["multiclass"] * 2000, ["1"] * 2000, 0.0)
    recent = RecentPredictions()
    gc.disable()
    try:
        before = len(gc.get_objects())
        recent.added(big)
        after = len(gc.get_objects())
    finally:
        gc.enable()
    assert after - before < 20
    assert recent.get("id-1999") is not None


def test_a_put_a_worker_wrote_stays_only_while_lookups_that_began_before_it_arrived_run() -> None:
    recent = RecentPredictions()
    recent.arrived_written(put("a"))  # no lookup running: every later one reads it in the store
    assert recent.get("a") is None and len(recent) == 0
    ticket = recent.begin_lookup()  # its read of the store may have come before the worker's commit
    recent.arrived_written(put("b"))
    assert recent.get("b") is not None and recent.queued_rows == 0
    late = recent.begin_lookup()
    recent.end_lookup(ticket)
    assert recent.get("b") is None
    recent.end_lookup(late)
    assert len(recent) == 0


def test_a_put_a_worker_wrote_leaves_the_queued_ones_in_their_order() -> None:
    recent = RecentPredictions()
    ticket = recent.begin_lookup()
    recent.added(put("queued"))
    recent.arrived_written(put("elsewhere"))
    recent.written(1)  # the writer thread finished the queued put, not the worker's
    assert recent.queued_rows == 0
    recent.end_lookup(ticket)
    assert len(recent) == 0
