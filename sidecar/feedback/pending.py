"""Feedback waiting for its prediction to be analysed: bounded in time (`timeout`) and in instances (`max_instances`).

Entries leave in one of three ways: `take` (their prediction arrived), `expire` (older than the timeout) or
eviction (the oldest go first when a new entry would exceed the bound). The caller counts the last two as expired.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from sidecar.feedback.parse import FeedbackItem


class _Entry:
    __slots__ = ("deadline", "item", "live")

    def __init__(self, item: FeedbackItem, deadline: float) -> None:
        self.item = item
        self.deadline = deadline
        self.live = True


class PendingFeedback:
    def __init__(self, max_instances: int, timeout: float) -> None:
        self.max_instances = max_instances
        self.timeout = timeout
        self.instances = 0
        self._by_id: dict[str, list[_Entry]] = {}
        self._order: deque[_Entry] = deque()  # arrival order = deadline order (one timeout for all)
        self._dead = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, prediction_id: str) -> bool:
        return prediction_id in self._by_id

    def ids(self) -> list[str]:
        return list(self._by_id)

    def add(self, item: FeedbackItem, now: float) -> list[FeedbackItem]:
        """Hold `item` until `now + timeout`; returns the entries evicted to make room (oldest first)."""
        entry = _Entry(item, now + self.timeout)
        self._order.append(entry)
        self._by_id.setdefault(item.prediction_id, []).append(entry)
        self.instances += item.size
        evicted: list[FeedbackItem] = []
        while self.instances > self.max_instances and self._order:
            oldest = self._order.popleft()
            if oldest.live:
                self._drop(oldest)
                evicted.append(oldest.item)
            else:
                self._dead -= 1
        return evicted

    def take(self, prediction_ids: Iterable[str]) -> list[FeedbackItem]:
        """Remove and return every entry held for these ids (their predictions are known now)."""
        taken: list[FeedbackItem] = []
        for prediction_id in prediction_ids:
            entries = self._by_id.pop(prediction_id, None)
            if not entries:
                continue
            for entry in entries:
                entry.live = False
                self.instances -= entry.item.size
                self._dead += 1
                taken.append(entry.item)
        if self._dead > 1000 and self._dead > 2 * len(self._order) // 3:
            self._order = deque(entry for entry in self._order if entry.live)
            self._dead = 0
        return taken

    def expire(self, now: float) -> list[FeedbackItem]:
        """Remove and return the entries whose deadline has passed."""
        expired: list[FeedbackItem] = []
        while self._order and self._order[0].deadline <= now:
            entry = self._order.popleft()
            if entry.live:
                self._drop(entry)
                expired.append(entry.item)
            else:
                self._dead -= 1
        return expired

    def _drop(self, entry: _Entry) -> None:
        entry.live = False
        self.instances -= entry.item.size
        entries = self._by_id.get(entry.item.prediction_id)
        if entries is not None:
            entries.remove(entry)
            if not entries:
                del self._by_id[entry.item.prediction_id]
