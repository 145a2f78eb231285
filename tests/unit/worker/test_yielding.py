"""Yield points: the worker yields its CPU at most once per interval, however often it passes one, and once more as
soon as the interval has passed. The module's clock is a fake one here, so no test depends on how fast it runs."""

from __future__ import annotations

import os
import time

import pytest

from sidecar.worker import yielding

INTERVAL = yielding.INTERVAL_NS
START = 10**12  # a monotonic clock reads far from 0


class Clock:
    """Stands in for the `time` module in `yielding`: `monotonic_ns()` reads `now`, which the test moves."""

    def __init__(self) -> None:
        self.now = START

    def monotonic_ns(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(yielding, "time", fake)
    monkeypatch.setattr(yielding, "_due", 0)  # as at import: the first yield point yields
    return fake


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> list[int]:
    """When the worker called sched_yield, by the fake clock (the system call itself is not observable)."""
    at: list[int] = []
    monkeypatch.setattr(yielding, "_sched_yield", lambda: at.append(clock.now))
    return at


def test_the_first_yield_point_yields_and_the_next_ones_within_the_interval_do_not(
        clock: Clock, yields: list[int]) -> None:
    yielding.yield_point()
    assert yields == [START]
    for step in (1, INTERVAL // 2, INTERVAL - 1):  # however many times, until the interval has passed
        clock.now = START + step
        for _ in range(100):
            yielding.yield_point()
    assert yields == [START]


def test_the_first_yield_point_once_the_interval_has_passed_yields_and_starts_the_next_interval(
        clock: Clock, yields: list[int]) -> None:
    yielding.yield_point()
    clock.now = START + INTERVAL
    yielding.yield_point()
    yielding.yield_point()
    assert yields == [START, START + INTERVAL]
    clock.now = START + 5 * INTERVAL + 7  # a long stretch without a yield point: one yield, not one per interval
    yielding.yield_point()
    yielding.yield_point()
    clock.now += INTERVAL - 1  # the next interval counts from that yield
    yielding.yield_point()
    assert yields == [START, START + INTERVAL, START + 5 * INTERVAL + 7]
    clock.now += 1
    yielding.yield_point()
    assert yields == [START, START + INTERVAL, START + 5 * INTERVAL + 7, START + 6 * INTERVAL + 7]


def test_a_worker_passing_yield_points_all_the_time_yields_once_per_interval(clock: Clock, yields: list[int]) -> None:
    for _ in range(10 * INTERVAL // 1000):  # a yield point every microsecond for ten intervals
        yielding.yield_point()
        clock.now += 1000
    assert yields == [START + n * INTERVAL for n in range(10)]


@pytest.mark.skipif(not hasattr(os, "sched_yield"), reason="os.sched_yield is POSIX only")
def test_the_real_yield_point_calls_sched_yield_and_is_due_again_one_interval_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert yielding._sched_yield is os.sched_yield  # the real system call, bound when the module was imported
    calls: list[int] = []

    def counted() -> None:
        os.sched_yield()
        calls.append(1)

    monkeypatch.setattr(yielding, "_sched_yield", counted)
    monkeypatch.setattr(yielding, "_due", 0)
    before = time.monotonic_ns()
    yielding.yield_point()
    after = time.monotonic_ns()
    assert calls == [1]  # yielded once, through the system call, with the real clock
    assert before + INTERVAL <= yielding._due <= after + INTERVAL  # the next yield is due one interval later
