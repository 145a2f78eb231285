"""Small helpers the tests share: a free loopback port, waiting for an asynchronous effect, reading a metric.

    from tests.support.helpers import eventually, free_port, metric
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listened on a moment ago: bound to port 0, read back and released.

    Nothing holds it afterwards, so the caller either binds it at once or uses it as a port where nobody answers.
    """
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def eventually(condition: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05,
                     message: str = "condition not reached in time", *,
                     state: Callable[[], object] | None = None) -> None:
    """Wait, letting the event loop run, until `condition()` is true; fail the test with `message` after `timeout` s.

    `condition` is checked first, every `interval` seconds after that and once more after the deadline, so an
    effect that is already there returns at once. `state`, when given, is called only on a timeout and its result
    appended to the message, to show what the test was looking at.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            detail = "" if state is None else f"; state: {state()}"
            raise AssertionError(f"{message} (waited {timeout:g} s){detail}")
        await asyncio.sleep(interval)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels in `registry`; 0.0 when there is no such sample.

    A counter or gauge that was never touched reads 0.0 here, as Prometheus would treat it. To assert that a
    sample is absent (or present with the value 0), call `registry.get_sample_value(name, labels)` directly.
    """
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
