"""`sidecar run` tunes the interpreter for a latency-sensitive event loop beside background threads."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from sidecar.__main__ import (
    GIL_SWITCH_INTERVAL,
    YOUNG_GENERATION_THRESHOLD,
    collect_young_objects_often,
    shorten_gil_switch_interval,
)


@pytest.fixture
def interpreter_settings() -> Iterator[None]:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.set_threshold(*thresholds)
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("interpreter_settings")
def test_young_collections_run_more_often_and_older_generations_keep_their_policy() -> None:
    gc.set_threshold(700, 10, 10)
    collect_young_objects_often()
    assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, 10, 10)
    assert YOUNG_GENERATION_THRESHOLD < 700


@pytest.mark.usefixtures("interpreter_settings")
def test_the_loop_thread_wins_the_gil_back_within_half_a_millisecond() -> None:
    shorten_gil_switch_interval()
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL) == pytest.approx(0.0005)
