"""Predictions handed to the store that a lookup might not see yet, answered from memory instead.

A lookup reads the store on another thread while predictions keep arriving on the loop. A prediction queued
before the read but committed after it would be missed, and its feedback held until it expires. So every put
stays here until it is written *and* every lookup that was already running when it was written has finished:
a lookup checks here before and after reading the store, and whatever it missed in the store is still here.
All methods run on the event loop thread.
"""

from __future__ import annotations

from collections import Counter, deque

from sidecar.feedback.store import StoredPrediction


class RecentPredictions:
    def __init__(self) -> None:
        self._records: dict[str, tuple[StoredPrediction, int]] = {}
        self._puts: deque[tuple[int, int, list[str]]] = deque()  # (put number, rows, ids), oldest first
        self._written: deque[tuple[int, int, list[str]]] = deque()  # (epoch written, put number, ids)
        self._put_number = 0
        self._epoch = 0  # advances each time a write completes
        self._lookups: Counter[int] = Counter()  # epochs at which running lookups began
        self.queued_rows = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, prediction_id: str) -> StoredPrediction | None:
        entry = self._records.get(prediction_id)
        return entry[0] if entry is not None else None

    def added(self, records: dict[str, StoredPrediction], rows: int) -> None:
        """Records of one put (of `rows` rows) are on their way to the store."""
        self._put_number += 1
        for prediction_id, record in records.items():
            self._records[prediction_id] = (record, self._put_number)
        self._puts.append((self._put_number, rows, list(records)))
        self.queued_rows += rows

    def written(self, rows: int) -> None:
        """The writer finished the oldest puts, `rows` rows in all (it never splits a put)."""
        while rows > 0 and self._puts:
            number, count, ids = self._puts.popleft()
            rows -= count
            self.queued_rows -= count
            self._written.append((self._epoch, number, ids))
        self._epoch += 1
        self._forget()

    def begin_lookup(self) -> int:
        self._lookups[self._epoch] += 1
        return self._epoch

    def end_lookup(self, ticket: int) -> None:
        self._lookups[ticket] -= 1
        if self._lookups[ticket] <= 0:
            del self._lookups[ticket]
        self._forget()

    def _forget(self) -> None:
        """Drop written puts that no running lookup could have missed (it began after they were written)."""
        oldest = min(self._lookups) if self._lookups else self._epoch + 1
        while self._written and self._written[0][0] < oldest:
            _, number, ids = self._written.popleft()
            for prediction_id in ids:
                entry = self._records.get(prediction_id)
                if entry is not None and entry[1] == number:
                    del self._records[prediction_id]
