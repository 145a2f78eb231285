"""Yield points: the worker yields its CPU at most once per interval, however often it passes one."""

from __future__ import annotations

import pytest

from sidecar.worker import yielding


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the worker's calls to sched_yield (the system call itself is not observable from Python)."""
    calls: list[int] = []
    monkeypatch.setattr(yielding, "_sched_yield", lambda: calls.append(1))
    monkeypatch.setattr(yielding, "_due", 0)
    return calls


def test_the_first_yield_point_yields_and_the_next_ones_within_the_interval_do_not(
        yields: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yielding, "INTERVAL_NS", 60 * 10**9)
    for _ in range(1000):
        yielding.yield_point()
    assert len(yields) == 1


def test_every_yield_point_yields_once_the_interval_has_passed(yields: list[int],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yielding, "INTERVAL_NS", 0)
    for _ in range(5):
        yielding.yield_point()
    assert len(yields) == 5


def test_the_real_yield_point_returns() -> None:
    yielding.yield_point()
