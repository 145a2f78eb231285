"""Predictions handed to the store that a lookup might not see yet, answered from memory instead.

A lookup reads the store on another thread while predictions keep arriving on the loop. A prediction queued
before the read but committed after it would be missed, and its feedback held until it expires. So every put
stays here until it is written *and* every lookup that was already running when it was written has finished:
a lookup checks here before and after reading the store, and whatever it missed in the store is still here.
Puts stay the columns they arrived as (see `PredictionColumns`); an id maps to the latest put that holds it.
All methods run on the event loop thread.
"""

from __future__ import annotations

from collections import Counter, deque

from sidecar.feedback.store import PredictionColumns, StoredPrediction


class RecentPredictions:
    def __init__(self) -> None:
        self._latest: dict[str, PredictionColumns] = {}  # id -> the latest put holding it
        self._puts: deque[PredictionColumns] = deque()  # queued, oldest first
        self._written: deque[tuple[int, PredictionColumns]] = deque()  # (epoch written, put)
        self._epoch = 0  # advances each time a write completes
        self._lookups: Counter[int] = Counter()  # epochs at which running lookups began
        self.queued_rows = 0

    def __len__(self) -> int:
        return len(self._latest)

    def get(self, prediction_id: str) -> StoredPrediction | None:
        put = self._latest.get(prediction_id)
        return put.record(prediction_id) if put is not None else None

    def columns(self, prediction_id: str) -> PredictionColumns | None:
        """The latest put holding `prediction_id`, while it is kept here."""
        return self._latest.get(prediction_id)

    def added(self, put: PredictionColumns) -> None:
        """`put` is on its way to the store."""
        self._latest.update(dict.fromkeys(put.ids, put))
        self._puts.append(put)
        self.queued_rows += len(put)

    def arrived_written(self, put: PredictionColumns) -> None:
        """`put` was in the store before it arrived (a worker wrote it): only lookups running now could have missed
        it, so it stays only while they run."""
        if not self._lookups:
            return
        self._latest.update(dict.fromkeys(put.ids, put))
        self._written.append((self._epoch, put))
        self._epoch += 1
        self._forget()

    def written(self, rows: int) -> None:
        """The writer finished the oldest puts, `rows` rows in all (it never splits a put)."""
        while rows > 0 and self._puts:
            put = self._puts.popleft()
            rows -= len(put)
            self.queued_rows -= len(put)
            self._written.append((self._epoch, put))
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
        latest = self._latest
        while self._written and self._written[0][0] < oldest:
            _, put = self._written.popleft()
            for prediction_id in put.ids:
                if latest.get(prediction_id) is put:
                    del latest[prediction_id]
