"""The recent sample the feature importance explains: the latest complete rows, written atomically when due."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sidecar.worker.recent import RECENT_FILE, RecentSample


def test_keeps_the_latest_complete_rows_and_saves_them_when_due(tmp_path: Path) -> None:
    sample = RecentSample(tmp_path / "model", rows=3, save_every=10.0)
    assert not sample.save_if_due(now=0.0)  # nothing kept yet: nothing written
    sample.add(np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 3.0]]))
    sample.add(np.array([[4.0, 4.0], [5.0, 5.0]]))
    assert sample.save_if_due(now=100.0)
    with np.load(tmp_path / "model" / RECENT_FILE) as saved:
        np.testing.assert_array_equal(saved["inputs"], [[3.0, 3.0], [4.0, 4.0], [5.0, 5.0]])
        assert float(saved["saved"]) > 0
    sample.add(np.array([[6.0, 6.0]]))
    assert not sample.save_if_due(now=105.0)  # changed, but not due
    assert sample.save_if_due(now=111.0)
    assert not sample.save_if_due(now=200.0)  # due, but unchanged
    sample.clear()
    assert not (tmp_path / "model" / RECENT_FILE).exists()


def test_a_change_of_width_starts_the_sample_again(tmp_path: Path) -> None:
    sample = RecentSample(tmp_path, rows=4, save_every=0.0)
    sample.add(np.ones((2, 3)))
    sample.add(np.zeros((1, 2)))
    assert sample.save_if_due(now=1.0)
    with np.load(tmp_path / RECENT_FILE) as saved:
        assert saved["inputs"].shape == (1, 2)
