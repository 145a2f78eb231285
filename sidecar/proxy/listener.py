"""What every proxy is to the composition root: something that listens on a port, started and stopped."""

from __future__ import annotations

from typing import Protocol


class Listener(Protocol):
    """`port` is the port actually bound once started (settings may ask for 0)."""

    @property
    def port(self) -> int | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
