"""Every proxy test runs on asyncio's default loop and on uvloop (production's loop)."""

from tests.support.loops import both_loops as pytest_asyncio_loop_factories

__all__ = ["pytest_asyncio_loop_factories"]
