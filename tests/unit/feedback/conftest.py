"""Fixtures of the feedback tests: a started FeedbackService on a fresh state directory, and a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.feedback.api import FeedbackService
from sidecar.feedback.settings import FeedbackSettings
from sidecar.telemetry.metrics import new_registry

from .redis_server import running_redis

StartService = Callable[..., Awaitable[FeedbackService]]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with running_redis(tmp_path) as url:
        yield url


@pytest.fixture
async def start_service(tmp_path: Path) -> AsyncIterator[StartService]:
    """Start services with settings overrides; `state_dir`, `registry`, `task_overrides` and `shadows` may be given
    too."""
    started: list[FeedbackService] = []

    async def start(state_dir: Path | None = None, registry: CollectorRegistry | None = None,
                    task_overrides: dict[str, str] | None = None, shadows: tuple[str, ...] = (),
                    **overrides: Any) -> FeedbackService:
        settings = replace(FeedbackSettings(), **overrides)
        service = FeedbackService(settings, state_dir or tmp_path / "state", registry or new_registry(),
                                  task_overrides or {}, shadows=shadows)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        await service.stop()
