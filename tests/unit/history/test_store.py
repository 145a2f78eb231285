"""The history store: buckets survive a reopen, come back in pages oldest first, and retention by time and rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.history.store import HistoryStore


def bucket(start: float, end: float, **extra: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "instances": 10, "inputs": {"x": {"kind": "numeric", "mean": start}},
            **extra}


async def test_buckets_survive_a_restart_and_page_oldest_first(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.sqlite", retention=1e9, max_rows=1000, clock=lambda: 10_000.0)
    await store.start()
    for start in (300.0, 100.0, 200.0):
        store.put("m", start, start + 100, bucket(start, start + 100))
    store.put("other", 100.0, 200.0, bucket(100.0, 200.0))
    await store.stop()

    reopened = HistoryStore(tmp_path / "history.sqlite", retention=1e9, max_rows=1000, clock=lambda: 10_000.0)
    await reopened.start()
    try:
        first = await reopened.page("m", 0.0, 1e18, None, 2)
        assert [item["start"] for item in first.buckets] == [100.0, 200.0] and first.more
        rest = await reopened.page("m", 0.0, 1e18, (200.0, 300.0), 2)
        assert [item["start"] for item in rest.buckets] == [300.0] and not rest.more
        overlapping = await reopened.page("m", 250.0, 310.0, None, 10)
        assert [item["start"] for item in overlapping.buckets] == [200.0, 300.0]
        assert await reopened.has_model("other") and not await reopened.has_model("nobody")
    finally:
        await reopened.stop()


async def test_a_bucket_written_twice_keeps_its_latest_version(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite", retention=1e9, max_rows=1000, clock=lambda: 1000.0)
    await store.start()
    try:
        store.put("m", 0.0, 60.0, bucket(0.0, 60.0, instances=1))
        store.put("m", 0.0, 60.0, bucket(0.0, 60.0, instances=2))
        page = await store.page("m", 0.0, 1e18, None, 10)
        assert [item["instances"] for item in page.buckets] == [2]
    finally:
        await store.stop()


async def test_retention_by_time_and_by_rows(tmp_path: Path) -> None:
    now = [10_000.0]
    store = HistoryStore(tmp_path / "h.sqlite", retention=1000.0, max_rows=100, clock=lambda: now[0])
    await store.start()
    try:
        for start in range(8000, 10_000, 10):  # 200 buckets: twice the row bound
            store.put("m", float(start), float(start + 10), bucket(start, start + 10))
        page = await store.page("m", 0.0, 1e18, None, 1000)
        assert 95 <= len(page.buckets) <= 100
        assert page.buckets[-1]["start"] == 9990.0  # the oldest went
        now[0] = 10_950.0  # retention 1000 s: buckets that ended before 9950 expire at the next (periodic) trim
        store.put("m", 10_940.0, 10_950.0, bucket(10_940.0, 10_950.0))
        page = await store.page("m", 0.0, 1e18, None, 1000)
        assert all(item["end"] >= 9950.0 for item in page.buckets)
        assert [item["start"] for item in page.buckets][:1] == [9940.0]
    finally:
        await store.stop()
