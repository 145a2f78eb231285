"""A process for the durability tests: a FeedbackService whose predictions are put in phases, stopped on SIGTERM or
SIGINT the way the sidecar's `run` command stops (the signal sets an event, then `stop()` runs), or killed.

Run: `python -m tests.unit.feedback.store_child STATE_DIR STORE INTERVAL PHASE...`, where STORE is `sqlite` or a
Redis URL, INTERVAL is store_flush_interval in seconds, and each PHASE is `NAME:COUNT` (put COUNT prediction
instances under ids `NAME-0`...) or `sleep:SECONDS`. Prints `queued NAME` after each put, `ready` after the last
phase, then waits for a signal; the log goes to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from sidecar.feedback.api import FeedbackService
from sidecar.feedback.settings import FeedbackSettings
from sidecar.messages.results import StoredPredictions
from sidecar.telemetry.metrics import new_registry


def say(line: str) -> None:
    print(line, flush=True)


async def main(state_dir: Path, store: str, interval: float, phases: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings = replace(FeedbackSettings(), store=store, store_flush_interval=interval, store_flush_rows=1_000_000)
    service = FeedbackService(settings, state_dir, new_registry(), {})
    await service.start()
    try:
        for phase in phases:
            name, _, value = phase.partition(":")
            if name == "sleep":
                await asyncio.sleep(float(value))
                continue
            count = int(value)
            service.add_stored(StoredPredictions("m", [f"{name}-{index}" for index in range(count)], [0] * count,
                                                 ["binary"] * count, [0.5] * count))
            say(f"queued {name}")
        say("ready")
        await stop.wait()
    finally:
        await service.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4:]))
