"""Process setup shared by the commands (`sidecar run`, `sidecar demo`): logging, the event loop, the GIL, the heap."""

from __future__ import annotations

import asyncio
import gc
import sys

GIL_SWITCH_INTERVAL = 0.0005


def shorten_gil_switch_interval() -> None:
    """Let the event loop thread win the GIL back within 0.5 ms instead of Python's default 5 ms.

    Threads of this process (the prediction store's writer and reader, the payload-log senders; until
    2026-11-21 also the analysis pool's supervisor and senders) hold the GIL for bursts of Python work; a request
    arriving meanwhile waits for the burst. When the pool still applied results on its own thread (one batch's
    results took about 1.2 ms of CPU on a 2-vCPU VM), the proxy's p99 with analysis saturated and paced load
    (bench/bench_analysis_load.py --connections 1 --rounds 3) went from 1.27 to about 0.9 ms with this setting.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def freeze_startup_heap() -> None:
    """Move everything allocated during start-up out of the garbage collector's reach.

    Full collections over the start-up heap paused the event loop for 21-25 ms (seen as p99 spikes in
    bench/bench_export.py); after `gc.freeze()` they take about 0.7 ms.
    """
    gc.collect()
    gc.freeze()


def name_process(name: str) -> None:
    """The name `ps`, `top` and /proc/<pid>/comm show for this process (Linux; at most 15 characters)."""
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def configure_logging(level: str, log_format: str = "text") -> None:
    from sidecar.telemetry.logs import configure

    configure(level, log_format)


def install_fast_loop() -> None:
    """uvloop when available: the REST proxy's throughput roughly doubles with it."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
