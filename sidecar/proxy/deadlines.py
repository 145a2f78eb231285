"""Coarse deadlines for many short operations: one timer for all of them, O(1) to arm and to disarm.

Why not `loop.call_later` per request: under uvloop each call creates and later frees a libuv timer handle, about
3 us per request with the cancel, while requests that share one timeout only need to expire within a tick of it.
Items are bucketed by the tick their deadline falls in; a single timer runs while anything is armed and expires
whole buckets. An item never expires early, and at most about one tick late.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol


class Expiring(Protocol):
    def expired(self) -> None: ...


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.05) -> None:
        self._loop = loop
        self.tick = tick
        self._buckets: dict[int, set[Expiring]] = {}
        self._next = 0  # the first bucket not yet expired
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def arm(self, item: Expiring, delay: float) -> int:
        """Expire `item` `delay` seconds from now unless disarmed; returns the key `disarm` needs."""
        now = self._loop.time()
        if not self._buckets and self._timer is None:
            self._next = math.floor(now / self.tick)
        key = max(math.ceil((now + delay) / self.tick), self._next)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
        bucket.add(item)
        if self._timer is None:
            self._timer = self._loop.call_later(self.tick, self._expire)
        return key

    def disarm(self, item: Expiring, key: int) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(item)

    def _expire(self) -> None:
        due = math.floor(self._loop.time() / self.tick)
        buckets = self._buckets
        while self._next <= due:
            bucket = buckets.pop(self._next, None)
            self._next += 1
            for item in bucket or ():
                item.expired()  # may arm more; those land at or after self._next
        self._timer = None
        if buckets:
            self._timer = self._loop.call_later(self.tick, self._expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
