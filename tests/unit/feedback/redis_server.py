"""A real `redis-server` on a free loopback port, without persistence, for the Redis store tests."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.helpers import free_port

INSTALL_HINT = "redis-server is not installed (Debian: apt-get install -y redis-server)"


@contextlib.contextmanager
def running_redis(work_dir: Path) -> Iterator[str]:
    """Start redis-server on a free port and yield its URL; skips the test when the binary is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(INSTALL_HINT)
    for _ in range(5):  # another process may grab the free port before redis binds it
        port = free_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        if _wait_ready(url, process):
            try:
                yield url
            finally:
                process.terminate()
                process.wait(10)
            return
        process.kill()
        process.wait(10)
    raise RuntimeError("redis-server did not start")


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return True
            time.sleep(0.05)
    finally:
        client.close()
    return False
