"""Fixtures of the exporter tests: real receivers on loopback and a closed port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from .receivers import Receiver

StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver_factory() -> AsyncIterator[StartReceiver]:
    started: list[Receiver] = []

    async def start(**kwargs: Any) -> Receiver:
        receiver = await Receiver(**kwargs).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


@pytest.fixture
async def receiver(receiver_factory: StartReceiver) -> Receiver:
    return await receiver_factory()


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
