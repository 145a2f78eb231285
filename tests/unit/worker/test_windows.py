"""Windows: tumbling and sliding by instance count, time buckets by capture time."""

from __future__ import annotations

import numpy as np

from sidecar.worker.settings import AnalysisSettings
from sidecar.worker.windows import TIME_GRACE_SECONDS, CountWindows, TimeWindows, make_windows


def rows(start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.arange(start, start + count, dtype=np.float64)[:, None]
    return values, values * 10, values.ravel().copy()


def test_tumbling_windows_are_consecutive_disjoint_blocks() -> None:
    windows = CountWindows(size=4, step=4)
    assert windows.push(*rows(0, 3)) == []
    emitted = windows.push(*rows(3, 7))
    assert [w.inputs[:, 0].tolist() for w in emitted] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [w.number for w in emitted] == [0, 1]
    assert emitted[1].outputs is not None and emitted[1].outputs[:, 0].tolist() == [40, 50, 60, 70]
    assert (emitted[1].start, emitted[1].end) == (4.0, 7.0)
    [third] = windows.push(*rows(10, 2))
    assert third.inputs[:, 0].tolist() == [8, 9, 10, 11]
    assert windows.describe()["mode"] == "tumbling"
    assert windows.describe()["evaluated"] == 3


def test_sliding_windows_hold_the_last_size_rows_every_step_rows() -> None:
    windows = CountWindows(size=4, step=2)
    emitted = windows.push(*rows(0, 9))
    assert [w.inputs[:, 0].tolist() for w in emitted] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    [later] = windows.push(*rows(9, 1))
    assert later.inputs[:, 0].tolist() == [6, 7, 8, 9]
    assert windows.describe()["mode"] == "sliding"


def test_count_windows_fed_one_row_at_a_time_match_one_big_push() -> None:
    one_by_one = CountWindows(size=5, step=3)
    single = [w.inputs[:, 0].tolist() for n in range(20) for w in one_by_one.push(*rows(n, 1))]
    at_once = [w.inputs[:, 0].tolist() for w in CountWindows(size=5, step=3).push(*rows(0, 20))]
    assert single == at_once
    assert len(at_once) == 6


def test_time_windows_close_when_a_later_bucket_starts() -> None:
    windows = TimeWindows(seconds=10.0, min_instances=2)
    values = np.arange(5, dtype=np.float64)[:, None]
    assert windows.push(values, None, np.array([100.0, 101.0, 105.0, 109.0, 109.5])) == []
    [closed] = windows.push(values[:2], None, np.array([110.0, 111.0]))
    assert closed.instances == 5
    assert (closed.start, closed.end) == (100.0, 109.5)
    assert closed.outputs is None


def test_time_windows_close_on_poll_after_the_bucket_and_a_grace() -> None:
    windows = TimeWindows(seconds=10.0, min_instances=2)
    windows.push(np.zeros((3, 1)), None, np.array([100.0, 102.0, 104.0]))
    assert windows.poll(110.0) == []
    [closed] = windows.poll(110.0 + TIME_GRACE_SECONDS)
    assert closed.instances == 3
    assert windows.poll(500.0) == []


def test_time_windows_with_too_few_instances_are_skipped_and_counted() -> None:
    windows = TimeWindows(seconds=1.0, min_instances=3)
    windows.push(np.zeros((1, 1)), None, np.array([10.5]))
    assert windows.push(np.zeros((1, 1)), None, np.array([11.5])) == []
    assert windows.describe()["skipped"] == 1


def test_late_rows_join_the_open_time_bucket() -> None:
    windows = TimeWindows(seconds=10.0, min_instances=1)
    windows.push(np.zeros((1, 1)), None, np.array([115.0]))
    assert windows.push(np.zeros((1, 1)), None, np.array([99.0])) == []
    [closed] = windows.poll(200.0)
    assert closed.instances == 2


def test_window_kind_follows_the_model_settings() -> None:
    settings = AnalysisSettings(window_size=100, models={
        "a": {"window_mode": "sliding", "window_step": 10}, "b": {"window_mode": "time", "window_seconds": 30},
        "c": {"window_mode": "sliding"}})
    a = make_windows(settings.model_config("a"), 20)
    assert isinstance(a, CountWindows) and (a.size, a.step) == (100, 10)
    b = make_windows(settings.model_config("b"), 20)
    assert isinstance(b, TimeWindows) and b.seconds == 30.0
    c = make_windows(settings.model_config("c"), 20)
    assert isinstance(c, CountWindows) and c.step == 25
    tumbling = make_windows(settings.model_config("other"), 20)
    assert isinstance(tumbling, CountWindows) and tumbling.step == tumbling.size == 100
