"""Run the package's testbed (a TF-Serving-compatible model server) as a subprocess on free loopback ports.

    with running_testbed() as testbed:
        requests go to testbed.rest_url and testbed.grpc_target

The process prints `TESTBED READY rest=<port> grpc=<port>` once both servers listen; start-up trains and exports
small Keras models, which takes seconds to a minute on a busy machine (hence the generous timeout).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

READY_LINE = re.compile(r"TESTBED READY rest=(\d+) grpc=(\d+)")
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class TestbedProcess:
    __test__ = False  # not a pytest test class

    host: str
    rest_port: int
    grpc_port: int
    process: subprocess.Popen[str]

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def _wait_ready(process: subprocess.Popen[str], timeout: float) -> tuple[int, int]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"testbed exited with code {process.wait()} before it was ready")
            match = READY_LINE.search(line)
            if match:
                return int(match.group(1)), int(match.group(2))
    raise RuntimeError(f"testbed not ready after {timeout:.0f} s")


def _tail(stream: IO[bytes], limit: int = 4000) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-limit:]


@contextlib.contextmanager
def running_testbed(*args: str, host: str = "127.0.0.1",
                    timeout: float = START_TIMEOUT_SECONDS) -> Iterator[TestbedProcess]:
    """Start `python -m sidecar.testbed.cli` with extra `args`; stop it (SIGTERM, then SIGKILL) on exit."""
    command = [sys.executable, "-m", "sidecar.testbed.cli", "--host", host, "--rest-port", "0", "--grpc-port", "0",
               *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        try:
            try:
                rest_port, grpc_port = _wait_ready(process, timeout)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; stderr:\n{_tail(stderr)}") from None
            yield TestbedProcess(host, rest_port, grpc_port, process)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
