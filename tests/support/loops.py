"""Run a test package's async tests on both event loops: asyncio's default and uvloop, which production uses.

    from tests.support.loops import both_loops as pytest_asyncio_loop_factories   # in that package's conftest.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def both_loops(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's loop-factory hook: each async test runs once per loop, with ids `[asyncio]` and `[uvloop]`."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
