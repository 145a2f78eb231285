"""Real sidecars for tests: started in-process from a test's defaults plus per-call overrides, all stopped after.

    async with sidecar_factory(rest_only(testbed.rest_url, tmp_path / "state"), reference_size=100) as start:
        sidecar = await start(window_size=50)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sidecar import config
from sidecar.app import Sidecar

StartSidecar = Callable[..., Awaitable[Sidecar]]


def rest_only(rest_url: str, state_dir: Path) -> dict[str, Any]:
    """Settings of a sidecar proxying REST only to `rest_url`, on free loopback ports, capture flushed quickly."""
    return {"listen_rest": "127.0.0.1:0", "upstream_rest": rest_url, "listen_grpc": "off", "upstream_grpc": "off",
            "listen_admin": "127.0.0.1:0", "state_dir": str(state_dir), "capture_flush_interval": "0.05"}


@contextlib.asynccontextmanager
async def sidecar_factory(defaults: dict[str, Any], **more: Any) -> AsyncIterator[StartSidecar]:
    """`start(**overrides)` starts a sidecar with `defaults`, `more` and the overrides (last wins)."""
    started: list[Sidecar] = []

    async def start(**overrides: Any) -> Sidecar:
        sidecar = Sidecar(config.from_mapping({**defaults, **more, **overrides}))
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in reversed(started):
            await sidecar.stop()
