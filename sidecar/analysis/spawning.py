"""Starting an analysis worker process (spawn method) and when to restart one that died."""

from __future__ import annotations

import os
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from sidecar.worker import process as worker_module

QUICK_EXIT_SECONDS = 30.0  # a worker that dies sooner than this after starting counts as crash-looping
MAX_RESTART_DELAY = 30.0


def spawn_worker(context: SpawnContext, index: int, arguments: tuple[Any, ...]) -> tuple[BaseProcess, int, int]:
    """Start `worker_module.run(*arguments[:5], tasks, results, *arguments[5:])`; returns the process, its task
    pipe's writing end and its result pipe's reading end, as plain fds."""
    tasks_receive, tasks_send = context.Pipe(duplex=False)
    results_receive, results_send = context.Pipe(duplex=False)
    process = context.Process(target=worker_module.run, name=f"sidecar-analysis-{index}", daemon=True,
                              args=(*arguments[:5], tasks_receive, results_send, *arguments[5:]))
    try:
        process.start()
    finally:
        tasks_receive.close()  # the worker holds the only other ends: its death shows up as EOF / EPIPE here
        results_send.close()
    ends = os.dup(tasks_send.fileno()), os.dup(results_receive.fileno())
    tasks_send.close()
    results_receive.close()
    return process, *ends


def restart_delay(quick_exits: int) -> float:
    """No wait after one quick exit; then 0.5 s, doubling, at most `MAX_RESTART_DELAY`."""
    return 0.0 if quick_exits <= 1 else min(MAX_RESTART_DELAY, 0.5 * 2 ** (quick_exits - 2))
