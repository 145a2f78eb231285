"""Yield points: an analysis worker hands its CPU to any task waiting for it about every `INTERVAL_NS` of work.

Workers run at SCHED_IDLE so that they take only the CPU time the proxy leaves. Yet on Linux 6.18 (EEVDF, HZ=250)
scheduler traces showed the proxy's event loop, woken onto the CPU where a busy worker ran, left waiting behind the
worker until the next tick, up to 4 ms at a time: 0.1-47 ms in all per 4-second trace, median 2.3 ms over 19
traces (bench/sched_trace.py at the saturated-analysis load). `sched_yield` with nothing waiting is one cheap system
call; with the loop waiting, the loop runs at once. With a yield point in each MMD permutation block (0.6 ms of
work), each decoded record and each detector run: under 0.3 ms in 7 of 9 traces, 1.1 and 2.9 ms in the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

INTERVAL_NS = 500_000
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
_due = 0


def yield_point() -> None:
    """Yield the CPU when `INTERVAL_NS` have passed since the last yield (cheap enough to call per record)."""
    global _due
    now = time.monotonic_ns()
    if now >= _due:
        _due = now + INTERVAL_NS
        _sched_yield()
